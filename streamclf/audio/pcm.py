"""Raw PCM sources: interleaved samples on stdin, and anything ffmpeg reads, through a pipe.

An ffmpeg source restarts ffmpeg with back-off when it exits (a network stream that drops); a
stdin source ends at EOF.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import BinaryIO

import numpy as np
import structlog

from streamclf.audio.base import BLOCK_FRAMES, RETRY_MAX_S, Backoff, SourceBase, one_line
from streamclf.audio.ring import RingBuffer
from streamclf.errors import AudioInputError

log = structlog.get_logger(__name__)

PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
NETWORK_FALLBACK_RATE_HZ = 48000  # a network stream unreachable at start is read at this rate


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


class StdinSource(SourceBase):
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


class FfmpegSource(SourceBase):
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
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self._rate = sample_rate
        self._channels = channels
        self.restart = restart
        self.realtime = realtime
        self.blocksize = blocksize
        self.ffmpeg = ffmpeg
        self._backoff = backoff or Backoff()
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
                self._ring.mark_gap()  # what the new ffmpeg sends does not follow the old audio
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
