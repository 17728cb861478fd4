"""Audio files: whole into memory (`classify`, `evaluate`, training) or as a paced stream source.

soundfile reads WAV/FLAC/OGG/MP3; what it cannot (M4A/AAC, a station library's other staple)
is decoded by ffmpeg where one is installed, through the ffmpeg source's own command line.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from streamclf.audio.base import BLOCK_FRAMES, SourceBase, one_line
from streamclf.audio.pcm import FfmpegSource
from streamclf.audio.ring import RingBuffer
from streamclf.errors import AudioInputError

BUNDLED_CLIP = Path(__file__).resolve().parent.parent / "data" / "clip.ogg"  # 30 s of real music


def read_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    """Whole file as float32 ``[n, channels]`` and its rate (ffmpeg where soundfile fails)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        msg = f"audio file not found: {path}"
        raise AudioInputError(msg)
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, sf.SoundFileError, ValueError) as exc:
        decoded = _decode_with_ffmpeg(path) if shutil.which("ffmpeg") else None
        if decoded is None:
            msg = f"cannot read audio file {path}: {one_line(exc)}"
            raise AudioInputError(msg) from exc
        return decoded
    return audio, int(rate)


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int] | None:
    """The whole file at its own rate and channel count through the ffmpeg source's command;
    None where ffmpeg cannot read it either."""
    source = FfmpegSource(str(path), restart=False)
    try:
        source.open()
    except AudioInputError:
        return None
    done = subprocess.run(source.command(), capture_output=True, timeout=600, check=False)
    if done.returncode != 0 or not done.stdout:
        return None
    pcm = np.frombuffer(done.stdout, np.float32)
    frames = len(pcm) // source.channels
    return pcm[: frames * source.channels].reshape(frames, source.channels), source.sample_rate


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


class FileSource(SourceBase):
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


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".au", ".aiff", ".aif", ".m4a")


def audio_files(root: Path) -> list[Path]:
    """The audio files under the folder `root`, recursively, sorted; hidden files left out."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".")
    )
