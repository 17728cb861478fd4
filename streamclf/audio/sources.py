"""Audio sources: a live device, a file, anything ffmpeg reads, raw PCM on stdin.

Every source has the same small shape: ``open()`` learns ``sample_rate`` and ``channels``,
``start(ring)`` begins pushing float32 ``[n, channels]`` blocks at the native rate into a
:class:`~streamclf.audio.ring.RingBuffer`, ``stop()`` ends it. ``state`` is one of
``starting``, ``running``, ``lost`` (retrying with back-off), ``ended`` (finite input done) or
``failed`` (``error`` says why, one line); counters ``xruns``, ``restarts``,
``nonfinite_samples``. Failures inside a reader thread become ``failed`` plus one log line,
never a traceback.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import numpy as np
import structlog

from streamclf.audio.ring import RingBuffer
from streamclf.errors import AudioInputError

if TYPE_CHECKING:
    from streamclf.config import StreamConfig

log = structlog.get_logger(__name__)

BUNDLED_CLIP = Path(__file__).resolve().parent.parent / "data" / "clip.ogg"  # 30 s of real music
STATES = ("starting", "running", "lost", "ended", "failed")
BLOCK_FRAMES = 1024
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0
STALL_S = 3.0  # a device that delivers nothing this long after (re)start is lost
PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
NETWORK_FALLBACK_RATE_HZ = 48000  # a network stream unreachable at start is read at this rate


class Source(Protocol):
    sample_rate: int
    channels: int
    state: str
    xruns: int
    restarts: int
    error: AudioInputError | None

    @property
    def nonfinite_samples(self) -> int: ...

    def open(self) -> None: ...

    def start(self, ring: RingBuffer) -> None: ...

    def stop(self) -> None: ...


class _Backoff:
    """Doubling delays from ``first_s`` up to ``max_s``; ``reset()`` after a good run."""

    def __init__(self, first_s: float = RETRY_FIRST_S, max_s: float = RETRY_MAX_S) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.reset()

    def reset(self) -> None:
        self._next_s = self.first_s

    def next_s(self) -> float:
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


class _SourceBase:
    """State, counters and the stop event shared by every source."""

    kind = "source"

    def __init__(self) -> None:
        self.sample_rate = 0
        self.channels = 0
        self.state = "starting"
        self.xruns = 0
        self.restarts = 0
        self.error: AudioInputError | None = None
        self._ring: RingBuffer | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def nonfinite_samples(self) -> int:
        """NaN/Inf samples replaced by 0 (counted where the stream worker reads the ring)."""
        return 0 if self._ring is None else self._ring.nonfinite_samples

    def _attach(self, ring: RingBuffer) -> None:
        if self.sample_rate <= 0:
            self.open()
        if ring.channels != self.channels:
            msg = f"ring has {ring.channels} channels, {self.kind} delivers {self.channels}"
            raise ValueError(msg)
        self._ring = ring
        self._stopping.clear()

    def _set_state(self, state: str, **details: object) -> None:
        if state != self.state:
            self.state = state
            log.info("source_state", source=self.kind, state=state, **details)

    def _fail(self, error: AudioInputError) -> None:
        self.error = error
        self._set_state("failed", error=str(error))

    def _spawn(self, target) -> None:
        def guarded() -> None:
            try:
                target()
            except AudioInputError as exc:
                self._fail(exc)
            except Exception as exc:  # noqa: BLE001 - a reader thread ends in a state, not a traceback
                self._fail(AudioInputError(f"{self.kind}: {type(exc).__name__}: {exc}"))

        self._thread = threading.Thread(target=guarded, name=f"streamclf-{self.kind}", daemon=True)
        self._thread.start()

    def _join(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)


# -- files --------------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


class _Pacer:
    """Sleeps so that ``frames`` pushed so far are not ahead of real time."""

    def __init__(self, rate: int, stopping: threading.Event) -> None:
        self.rate = rate
        self.stopping = stopping
        self.t0 = time.monotonic()
        self.frames = 0

    def advance(self, frames: int) -> None:
        self.frames += frames
        self.stopping.wait(max(0.0, self.t0 + self.frames / self.rate - time.monotonic()))


class FileSource(_SourceBase):
    """An audio file via soundfile, paced in real time (``realtime=True``) or as fast as the
    ring drains (``realtime=False``: the reader waits for room instead of overrunning)."""

    kind = "file"

    def __init__(
        self,
        path: str | Path,
        *,
        realtime: bool = True,
        loop: bool = False,
        blocksize: int = BLOCK_FRAMES,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        self.blocksize = blocksize

    def open(self) -> None:
        import soundfile as sf

        if not self.path.is_file():
            msg = f"audio file not found: {self.path}"
            raise AudioInputError(msg)
        try:
            info = sf.info(self.path)
        except (RuntimeError, sf.SoundFileError) as exc:
            msg = f"cannot read audio file {self.path}: {one_line(exc)}"
            raise AudioInputError(msg) from exc
        self.sample_rate = int(info.samplerate)
        self.channels = int(info.channels)

    def start(self, ring: RingBuffer) -> None:
        self._attach(ring)
        self._spawn(self._run)

    def stop(self) -> None:
        self._stopping.set()
        self._join()

    def _run(self) -> None:
        import soundfile as sf

        ring = self._ring
        pacer = _Pacer(self.sample_rate, self._stopping)
        try:
            with sf.SoundFile(self.path) as f:
                # One buffer for every block: `read()` would allocate a new array per block and
                # read `__array_interface__` (which churns CPython's interned strings).
                block = np.empty((self.blocksize, f.channels), np.float32)
                self._set_state("running")
                while not self._stopping.is_set():
                    frames = f.buffer_read_into(block, dtype="float32")
                    if frames == 0:
                        if not self.loop:
                            break
                        f.seek(0)
                        continue
                    if not self.realtime:
                        _wait_for_room(ring, frames, self._stopping)
                    ring.write(block[:frames])
                    if self.realtime:
                        pacer.advance(frames)
        except (RuntimeError, sf.SoundFileError) as exc:
            msg = f"cannot read audio file {self.path}: {one_line(exc)}"
            raise AudioInputError(msg) from exc
        if not self._stopping.is_set():
            self._set_state("ended")


def _wait_for_room(ring: RingBuffer, frames: int, stopping: threading.Event) -> None:
    """Offline pacing: a file read as fast as possible must not lap its own reader."""
    while ring.capacity - ring.available < frames and not stopping.wait(0.002):
        pass


# -- raw PCM: stdin and ffmpeg ---------------------------------------------------------------


def _pump_pcm(
    stream: BinaryIO,
    ring: RingBuffer,
    *,
    dtype: np.dtype,
    channels: int,
    blocksize: int,
    stopping: threading.Event,
    on_data=None,
) -> int:
    """Copy raw interleaved PCM from ``stream`` into ``ring`` until EOF; returns frames read.

    Short reads are fine: a partial frame waits for the next read. float32 ``[n, channels]``
    out, integers scaled to [-1, 1).
    """
    frame_bytes = dtype.itemsize * channels
    buf = bytearray(blocksize * frame_bytes)
    view = memoryview(buf)
    scale = np.float32(1.0 / 32768.0) if dtype.kind == "i" else None
    have = 0
    total = 0
    while not stopping.is_set():
        got = stream.readinto(view[have:])
        if not got:
            break
        have += got
        n = have // frame_bytes
        if n == 0:
            continue
        pcm = np.frombuffer(buf, dtype=dtype, count=n * channels).reshape(n, channels)
        block = pcm.astype(np.float32)
        if scale is not None:
            block *= scale
        ring.write(block)
        total += n
        if on_data is not None:
            on_data()
        rest = have - n * frame_bytes
        view[:rest] = view[n * frame_bytes : have]
        have = rest
    if have:
        log.warning("pcm_partial_frame_dropped", bytes=have)
    return total


class StdinSource(_SourceBase):
    """Raw interleaved PCM (``s16le`` or ``f32le``) at a given rate on stdin (or any binary
    stream). EOF, early or not, ends the source (``ended``)."""

    kind = "stdin"

    def __init__(
        self,
        *,
        sample_rate: int,
        channels: int,
        fmt: str = "s16le",
        stream: BinaryIO | None = None,
        blocksize: int = BLOCK_FRAMES,
    ) -> None:
        super().__init__()
        if fmt not in PCM_FORMATS:
            msg = f"PCM format must be one of {sorted(PCM_FORMATS)}, got {fmt!r}"
            raise AudioInputError(msg)
        if sample_rate <= 0 or channels <= 0:
            msg = f"stdin needs a positive rate and channel count, got {sample_rate}, {channels}"
            raise AudioInputError(msg)
        self._rate = int(sample_rate)
        self._channels = int(channels)
        self.fmt = fmt
        self.blocksize = blocksize
        self._stream = stream

    def open(self) -> None:
        self.sample_rate = self._rate
        self.channels = self._channels
        if self._stream is None:
            self._stream = (
                sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
            )

    def start(self, ring: RingBuffer) -> None:
        self._attach(ring)
        self._spawn(self._run)

    def stop(self) -> None:
        """Stops after the read in progress returns (a blocked read of an idle pipe waits)."""
        self._stopping.set()
        self._join(timeout_s=1.0)

    def _run(self) -> None:
        self._set_state("running")
        frames = _pump_pcm(
            self._stream,
            self._ring,
            dtype=PCM_FORMATS[self.fmt],
            channels=self.channels,
            blocksize=self.blocksize,
            stopping=self._stopping,
        )
        if not self._stopping.is_set():
            self._set_state("ended", frames=frames)


class FfmpegSource(_SourceBase):
    """Anything ffmpeg reads (HTTP/Icecast, RTSP, SRT, files) as f32le PCM through a pipe.

    The native rate and channels come from ffprobe unless given. When ffmpeg exits, the
    source is ``lost`` and restarts it with back-off (``restart=False``: ``ended``).
    ``realtime=True`` adds ``-re`` (pace a file input like a live stream).
    """

    kind = "ffmpeg"

    def __init__(
        self,
        url: str,
        *,
        sample_rate: int | None = None,
        channels: int | None = None,
        restart: bool = True,
        realtime: bool = False,
        blocksize: int = BLOCK_FRAMES,
        ffmpeg: str = "ffmpeg",
        backoff: _Backoff | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self._rate = sample_rate
        self._channels = channels
        self.restart = restart
        self.realtime = realtime
        self.blocksize = blocksize
        self.ffmpeg = ffmpeg
        self._backoff = backoff or _Backoff()
        self._proc: subprocess.Popen | None = None
        self._proc_lock = threading.Lock()

    def open(self) -> None:
        exe = shutil.which(self.ffmpeg)
        if exe is None:
            msg = f"ffmpeg not found ({self.ffmpeg!r} is not on PATH); install ffmpeg"
            raise AudioInputError(msg)
        self._exe = exe
        if self._rate is None or self._channels is None:
            try:
                rate, channels = self._probe()
            except AudioInputError as exc:
                if not (self.restart and _is_network_url(self.url)):
                    raise
                # a stream that is down at start is retried like one that drops later; ffmpeg
                # converts whatever it finally gets to this rate and channel count
                log.warning("ffmpeg_probe_failed", url=self.url, error=str(exc),
                            assuming=f"{NETWORK_FALLBACK_RATE_HZ} Hz, 2 channels")
                rate, channels = NETWORK_FALLBACK_RATE_HZ, 2
            self._rate = self._rate or rate
            self._channels = self._channels or channels
        self.sample_rate = int(self._rate)
        self.channels = int(self._channels)

    def _probe(self) -> tuple[int, int]:
        probe = shutil.which("ffprobe", path=os.path.dirname(self._exe)) or shutil.which("ffprobe")
        if probe is None:
            msg = "ffprobe not found; give the ffmpeg source's sample rate and channels"
            raise AudioInputError(msg)
        cmd = [probe, "-v", "error", "-select_streams", "a:0", "-show_entries",
               "stream=sample_rate,channels", "-of", "csv=p=0", self.url]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        except subprocess.TimeoutExpired as exc:
            msg = f"ffprobe timed out on {self.url}"
            raise AudioInputError(msg) from exc
        fields = done.stdout.strip().split(",")
        if done.returncode != 0 or len(fields) != 2:
            reason = done.stderr.strip().splitlines()[-1:] or ["no audio stream"]
            msg = f"ffmpeg cannot read {self.url}: {reason[0]}"
            raise AudioInputError(msg)
        return int(fields[0]), int(fields[1])

    def command(self) -> list[str]:
        """The ffmpeg command line: native rate and channel count, f32le on stdout."""
        pace = ["-re"] if self.realtime else []
        return [self._exe, "-nostdin", "-hide_banner", "-loglevel", "error", *pace,
                "-i", self.url, "-vn", "-f", "f32le", "-acodec", "pcm_f32le",
                "-ac", str(self.channels), "-ar", str(self.sample_rate), "pipe:1"]  # fmt: skip

    def start(self, ring: RingBuffer) -> None:
        self._attach(ring)
        self._spawn(self._run)

    def stop(self) -> None:
        self._stopping.set()
        with self._proc_lock:
            proc = self._proc
        if proc is not None:
            _end_process(proc)
        self._join()

    def _run(self) -> None:
        first = True
        while not self._stopping.is_set():
            if not first:
                self.restarts += 1
            first = False
            started = time.monotonic()
            frames, reason = self._run_once()
            if self._stopping.is_set():
                return
            if not self.restart:
                if frames == 0:
                    msg = f"ffmpeg produced no audio from {self.url}: {reason}"
                    raise AudioInputError(msg)
                self._set_state("ended", frames=frames)
                return
            if time.monotonic() - started > 10 * RETRY_MAX_S:
                self._backoff.reset()
            delay = self._backoff.next_s()
            self._set_state("lost", reason=reason, retry_in_s=delay)
            self._stopping.wait(delay)

    def _run_once(self) -> tuple[int, str]:
        """One ffmpeg process: pump until it ends; returns frames read and why it ended."""
        try:
            proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, bufsize=0,
            )  # fmt: skip
        except OSError as exc:
            return 0, one_line(exc)
        with self._proc_lock:
            self._proc = proc
        errors: collections.deque[str] = collections.deque(maxlen=3)
        drain = threading.Thread(target=_drain_lines, args=(proc.stderr, errors), daemon=True)
        drain.start()
        try:
            frames = _pump_pcm(
                proc.stdout, self._ring, dtype=PCM_FORMATS["f32le"], channels=self.channels,
                blocksize=self.blocksize, stopping=self._stopping,
                on_data=lambda: self._set_state("running"),
            )  # fmt: skip
        finally:
            _end_process(proc)
            drain.join(1.0)
            with self._proc_lock:
                self._proc = None
        reason = errors[-1] if errors else f"ffmpeg exited with status {proc.returncode}"
        return frames, reason


def _is_network_url(url: str) -> bool:
    """True for a URL with a scheme other than file: (a local path that fails is a config error)."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.isalpha() and scheme.lower() != "file"


def _drain_lines(pipe: BinaryIO, keep: collections.deque) -> None:
    for line in iter(pipe.readline, b""):
        text = line.decode(errors="replace").strip()
        if text:
            keep.append(text)


def _end_process(proc: subprocess.Popen) -> None:
    """Terminate one child we started, by its own handle; kill if it ignores SIGTERM."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(2.0)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


# -- live devices -------------------------------------------------------------------------------


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


class DeviceSource(_SourceBase):
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
        backoff: _Backoff | None = None,
    ) -> None:
        super().__init__()
        self.device = device
        self._want_channels = channels
        self._want_rate = sample_rate
        self.blocksize = blocksize
        self.stall_s = stall_s
        self._backoff = backoff or _Backoff()
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


# -- construction from config and the `devices` command --------------------------------------


def open_source(spec: StreamConfig) -> Source:
    """The opened source a stream's config section describes (``sample_rate``/``channels`` known)."""
    if spec.source == "device":
        # a chosen channel beyond the first two must be opened to be picked
        wide = spec.channel + 1 if isinstance(spec.channel, int) and spec.channel >= 2 else None
        source: Source = DeviceSource(spec.device if spec.device != "" else None,
                                      channels=wide, blocksize=spec.blocksize)  # fmt: skip
    elif spec.source == "file":
        source = FileSource(spec.path, realtime=spec.realtime, loop=spec.loop,
                            blocksize=spec.blocksize)  # fmt: skip
    elif spec.source == "url":
        source = FfmpegSource(spec.url, blocksize=spec.blocksize)
    elif spec.source == "stdin":
        source = StdinSource(sample_rate=spec.stdin_rate, channels=spec.stdin_channels,
                             fmt=spec.stdin_format, blocksize=spec.blocksize)  # fmt: skip
    else:
        msg = f"unknown source kind {spec.source!r}"
        raise AudioInputError(msg)
    source.open()
    return source


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
