"""Whole audio files into memory: what `classify`, `evaluate` and training read.

soundfile reads WAV/FLAC/OGG/MP3; what it cannot (M4A/AAC, a station library's other staple)
is decoded by ffmpeg where one is installed, through the ffmpeg source's own command line.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from streamclf.audio.sources import FfmpegSource, one_line
from streamclf.errors import AudioInputError


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
