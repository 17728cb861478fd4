"""Live capture devices through PortAudio (sounddevice): listing, choosing, capturing, re-opening.

The callback only copies into the ring and counts xruns; a supervisor thread notices a lost
device and re-opens it by name with back-off.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog

from streamclf.audio.base import BLOCK_FRAMES, Backoff, SourceBase, one_line
from streamclf.audio.ring import RingBuffer
from streamclf.errors import AudioInputError

log = structlog.get_logger(__name__)

STALL_S = 3.0  # a device that delivers nothing this long after (re)start is lost


@dataclass(frozen=True, slots=True)
class InputDevice:
    """One capture device as PortAudio lists it (for ``streamclf devices``)."""

    index: int
    name: str
    channels: int
    default_rate_hz: float
    is_default: bool


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # libportaudio missing
        msg = f"PortAudio is not available: {one_line(exc)}"
        raise AudioInputError(msg) from exc
    return sounddevice


def list_input_devices() -> list[InputDevice]:
    """Every device with input channels, in PortAudio's order."""
    sd = _sounddevice()
    default_in = sd.default.device[0]
    return [
        InputDevice(
            index=i,
            name=d["name"],
            channels=int(d["max_input_channels"]),
            default_rate_hz=float(d["default_samplerate"]),
            is_default=i == default_in,
        )
        for i, d in enumerate(sd.query_devices())
        if d["max_input_channels"] > 0
    ]


def resolve_input_device(spec: int | str | None) -> InputDevice:
    """Device by index, exact name, or case-insensitive name substring (None: the default).

    Re-scans first, so a device plugged in (or a sound server started) since is found.
    """
    _refresh_portaudio()
    devices = list_input_devices()
    if spec is None:
        found = [d for d in devices if d.is_default]
        if not found:
            msg = "no default input device (streamclf devices lists the inputs)"
            raise AudioInputError(msg)
        return found[0]
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        found = [d for d in devices if d.index == int(spec)]
        if not found:
            msg = f"no input device with index {spec} (streamclf devices lists the inputs)"
            raise AudioInputError(msg)
        return found[0]
    exact = [d for d in devices if d.name == spec]
    found = exact or [d for d in devices if spec.lower() in d.name.lower()]
    if not found:
        msg = f"no input device matches {spec!r} (streamclf devices lists the inputs)"
        raise AudioInputError(msg)
    if len(found) > 1:
        log.info("device_ambiguous", spec=spec, chosen=found[0].name, matches=len(found))
    return found[0]


class DeviceSource(SourceBase):
    """A live input through ``sounddevice.InputStream`` at the device's native rate.

    The callback only copies into the ring and counts xruns. A supervisor thread notices a
    lost device (stream stopped by PortAudio, or no audio for ``stall_s``), closes it and
    reopens it by name with back-off until it works again.
    """

    kind = "device"

    def __init__(
        self,
        device: int | str | None = None,
        *,
        channels: int | None = None,
        sample_rate: int | None = None,
        blocksize: int = BLOCK_FRAMES,
        stall_s: float = STALL_S,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__()
        self.device = device
        self._want_channels = channels
        self._want_rate = sample_rate
        self.blocksize = blocksize
        self.stall_s = stall_s
        self._backoff = backoff or Backoff()
        self._stream = None
        self._callbacks = 0
        self.device_name = ""

    def open(self) -> None:
        info = resolve_input_device(self.device)
        channels = self._want_channels or min(2, info.channels)
        if channels > info.channels:
            msg = f"device {info.name!r} has {info.channels} input channels, {channels} asked"
            raise AudioInputError(msg)
        self.device_name = info.name
        self.channels = channels
        self.sample_rate = int(self._want_rate or info.default_rate_hz)

    def start(self, ring: RingBuffer) -> None:
        self._attach(ring)
        self._open_stream(resolve_input_device(self.device_name).index)
        self._spawn(self._supervise)

    def stop(self) -> None:
        self._stopping.set()
        self._join()
        self._close_stream()

    def _callback(self, indata, frames, time_info, status) -> None:
        if status:
            self.xruns += 1
        self._ring.write(indata)
        self._callbacks += 1

    def _open_stream(self, index: int) -> None:
        sd = _sounddevice()
        try:
            stream = sd.InputStream(
                device=index, channels=self.channels, samplerate=self.sample_rate,
                blocksize=self.blocksize, dtype="float32", callback=self._callback,
            )  # fmt: skip
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            msg = f"cannot open input device {self.device_name!r}: {one_line(exc)}"
            raise AudioInputError(msg) from exc
        self._stream = stream
        with _open_device_streams_lock:
            _open_device_streams.add(id(self))

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        with _open_device_streams_lock:
            _open_device_streams.discard(id(self))
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except _sounddevice().PortAudioError as exc:  # a dead device may refuse a clean close
                log.info("device_close_failed", error=one_line(exc))

    def _supervise(self) -> None:
        seen, seen_at = self._callbacks, time.monotonic()
        while not self._stopping.wait(0.05):
            now = time.monotonic()
            if self._callbacks != seen:
                seen, seen_at = self._callbacks, now
                self._set_state("running")
                self._backoff.reset()
            stopped = self._stream is None or not self._stream.active
            if stopped or now - seen_at > self.stall_s:
                self._recover(reason="stream stopped" if stopped else "no audio")
                seen, seen_at = self._callbacks, time.monotonic()

    def _recover(self, *, reason: str) -> None:
        """Close the dead stream and reopen the same device by name, with back-off."""
        self._set_state("lost", reason=reason)
        self._close_stream()
        self._ring.mark_gap()  # what the re-opened device captures does not follow the old audio
        while not self._stopping.wait(self._backoff.next_s()):
            try:
                self._open_stream(resolve_input_device(self.device_name).index)
            except AudioInputError as exc:
                log.info("device_retry_failed", device=self.device_name, error=str(exc))
                continue
            self.restarts += 1
            self._set_state("starting")
            return


_open_device_streams: set[int] = set()  # ids of DeviceSources holding an open stream
_open_device_streams_lock = threading.Lock()


def _refresh_portaudio() -> None:
    """Re-scan devices (PortAudio lists them once at start) unless another stream is open:
    re-initialising PortAudio would close every stream of the process."""
    sd = _sounddevice()
    with _open_device_streams_lock:
        if not _open_device_streams:
            sd._terminate()
            sd._initialize()


def print_input_devices(*, as_json: bool = False) -> int:
    """``streamclf devices``: one line per input (``*`` marks the default), or JSON."""
    import dataclasses
    import json

    devices = list_input_devices()
    if as_json:
        print(json.dumps([dataclasses.asdict(d) for d in devices], indent=2))
        return 0
    if not devices:
        print("no input devices")
    for d in devices:
        mark = "*" if d.is_default else " "
        print(f"{mark} {d.index:3d}  {d.name}  ({d.channels} ch, {d.default_rate_hz:g} Hz)")
    return 0
