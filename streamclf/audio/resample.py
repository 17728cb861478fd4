"""Downmix to mono, then resample to the model rate with soxr's streaming resampler.

musicnn's reference (``librosa.load(path, sr=16000)``) averages the channels *before* resampling
and resamples with soxr at quality HQ; ``soxr.ResampleStream`` at HQ gives the same samples
as the one-shot call, so a live stream sees exactly what the offline reference sees.
"""

from __future__ import annotations

import numpy as np
import soxr

from streamclf.audio import SAMPLE_RATE_HZ

RESAMPLE_QUALITY = "HQ"


def downmix(block: np.ndarray, *, mix: str | int = "mean") -> np.ndarray:
    """``block[n, channels]`` → float32 ``[n]``: the channel mean (as librosa) or one channel."""
    if mix == "mean":
        return block.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(block[:, mix], dtype=np.float32)


def resampled_length(n_in: int, *, in_rate: int, out_rate: int = SAMPLE_RATE_HZ) -> int:
    """Samples librosa keeps after resampling ``n_in`` samples: ``ceil(n_in * out / in)``."""
    return -(-n_in * out_rate // in_rate)


class Resampler:
    """Stateful ``[n, channels]`` at ``in_rate`` → float32 mono at 16 kHz.

    ``mix`` is ``"mean"`` or a channel index. ``push`` returns what is ready (soxr holds back
    its filter delay); ``flush`` drains the rest at the end of a finite stream.
    """

    def __init__(self, in_rate: int, channels: int, mix: str | int = "mean") -> None:
        if in_rate <= 0:
            msg = f"input sample rate must be positive, got {in_rate}"
            raise ValueError(msg)
        if mix != "mean" and not (isinstance(mix, int) and 0 <= mix < channels):
            msg = f"mix must be 'mean' or a channel index below {channels}, got {mix!r}"
            raise ValueError(msg)
        self.in_rate = int(in_rate)
        self.channels = int(channels)
        self.mix = mix
        self._stream = self._new_stream()

    def _new_stream(self) -> soxr.ResampleStream | None:
        if self.in_rate == SAMPLE_RATE_HZ:
            return None
        return soxr.ResampleStream(
            self.in_rate, SAMPLE_RATE_HZ, 1, dtype="float32", quality=RESAMPLE_QUALITY
        )

    def push(self, block: np.ndarray) -> np.ndarray:
        """``block[n, channels]`` → float32 ``[m]`` at 16 kHz (m ≈ n·16000/in_rate)."""
        mono = downmix(block, mix=self.mix)
        if self._stream is None:
            return mono
        return self._stream.resample_chunk(mono)

    def held_samples(self) -> float:
        """16 kHz samples that the input pushed so far will still give (soxr emits in bursts)."""
        return 0.0 if self._stream is None else self._stream.delay()

    def flush(self) -> np.ndarray:
        """The samples soxr still holds; the stream is then ready for a new input."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream = self._new_stream()
        return tail

    def reset(self) -> None:
        """Forget buffered input (a source restarted: the old tail belongs to lost audio)."""
        self._stream = self._new_stream()
