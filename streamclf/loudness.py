"""EBU R128 loudness and true peak of one stream, measured on the source's own audio.

Loudness is measured before the resampler (the source's rate and channels), because true peak
and the K-weighted channel sum are defined on the programme as broadcast, not on the model's
16 kHz mono. The arithmetic is libraries', not ours: loudness is libebur128's (via
`pyebur128`); true peak is the largest sample of the signal oversampled by soxr (4x below
96 kHz, as BS.1770 asks), because libebur128's own interpolator cost 0.87 % of a core per
44.1 kHz stereo stream against soxr's 0.26 %, and soxr came closer to ffmpeg (docs/loudness.md).
This module streams audio into both and reads them out at fixed 100 ms steps of stream time.

Integrated loudness and loudness range use libebur128's histogram mode: constant memory for a
daemon that runs for months (the block-list mode keeps every 100 ms block), at a resolution of
0.1 LU, the same kind of histogram ffmpeg's `ebur128` filter keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyebur128
import soxr

STEP_S = 0.1  # one reading per 100 ms of audio: the R128 gating block hop and ffmpeg's log step
# Short-term loudness is read every 10th step (1 s): libebur128 sums its whole 3 s buffer on each
# read (0.71 ms for 44.1 kHz stereo), 70 % of the stage's cost at 10 reads a second. Everything
# that uses it (status, metrics, a loudness alarm of many seconds) is slower than 1 Hz.
SHORT_TERM_EVERY_STEPS = 10
_MODE = (pyebur128.MeasurementMode.MODE_S | pyebur128.MeasurementMode.MODE_I
         | pyebur128.MeasurementMode.MODE_LRA | pyebur128.MeasurementMode.MODE_HISTOGRAM)


def true_peak_oversampling(sample_rate_hz: int) -> int:
    """BS.1770-4 Annex 2: 4x below 96 kHz, 2x below 192 kHz, none above."""
    return 4 if sample_rate_hz < 96000 else 2 if sample_rate_hz < 192000 else 1


@dataclass(frozen=True)
class LoudnessReading:
    """The loudness of a stream at stream time `t_s` (seconds since the meter's last reset).

    `short_term_lufs` is refreshed every whole second of stream time (`SHORT_TERM_EVERY_STEPS`)
    and held in between. Until 400 ms (momentary) or 3 s (short-term) of audio were seen, the
    rest of the window counts as silence, so those read low at first (ffmpeg's too); digital
    silence is -inf, and integrated loudness is -inf until a 400 ms block passes its gates.
    `step_true_peak_dbtp` is the true peak of the audio that left the oversampler during the
    last step (soxr holds back about 14 ms at 44.1/48 kHz, 41 ms at 16 kHz), for clipping
    alarms; `true_peak_dbtp` the maximum since the reset.
    """

    t_s: float
    momentary_lufs: float
    short_term_lufs: float
    integrated_lufs: float
    range_lu: float
    true_peak_dbtp: float
    step_true_peak_dbtp: float


def _db(amplitude: float) -> float:
    return 20.0 * math.log10(amplitude) if amplitude > 0 else -math.inf


class LoudnessMeter:
    """Streams (frames, channels) float32 blocks into libebur128 and soxr; one reading per step."""

    def __init__(self, sample_rate_hz: int, channels: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self._step_frames = round(STEP_S * sample_rate_hz)
        self.reset()

    def reset(self) -> None:
        """Forget all audio: after a gap nothing is computed from the audio before it."""
        self._state = pyebur128.R128State(self.channels, self.sample_rate_hz, _MODE)
        factor = true_peak_oversampling(self.sample_rate_hz)
        self._oversampler = soxr.ResampleStream(self.sample_rate_hz, factor * self.sample_rate_hz,
                                                self.channels, dtype="float32", quality="HQ") \
            if factor > 1 else None
        self._frames_in_step = 0
        self._steps = 0
        self._step_peak = 0.0
        self._peak = 0.0
        self._short_term = -math.inf

    def push(self, block: np.ndarray) -> Iterator[LoudnessReading]:
        """Add a (frames, channels) block; yield a reading at each 100 ms step it completes."""
        if block.ndim != 2 or block.shape[1] != self.channels:
            msg = f"expected a (frames, {self.channels}) block, got shape {block.shape}"
            raise ValueError(msg)
        start = 0
        while start < len(block):
            take = min(len(block) - start, self._step_frames - self._frames_in_step)
            part = np.ascontiguousarray(block[start:start + take], dtype=np.float32)
            self._state.add_frames(part.reshape(-1), take)
            self._step_peak = max(self._step_peak, self._oversampled_peak(part))
            self._frames_in_step += take
            start += take
            if self._frames_in_step == self._step_frames:
                self._steps += 1
                self._peak = max(self._peak, self._step_peak)
                yield self._reading()
                self._frames_in_step = 0
                self._step_peak = 0.0

    def _oversampled_peak(self, part: np.ndarray) -> float:
        upsampled = part if self._oversampler is None else self._oversampler.resample_chunk(part)
        return float(np.abs(upsampled).max()) if upsampled.size else 0.0

    def _reading(self) -> LoudnessReading:
        state = self._state
        if self._steps % SHORT_TERM_EVERY_STEPS == 0:
            self._short_term = pyebur128.get_loudness_shortterm(state)
        return LoudnessReading(
            t_s=self._steps * self._step_frames / self.sample_rate_hz,
            momentary_lufs=pyebur128.get_loudness_momentary(state),
            short_term_lufs=self._short_term,
            integrated_lufs=pyebur128.get_loudness_global(state),
            range_lu=pyebur128.get_loudness_range(state),
            true_peak_dbtp=_db(self._peak),
            step_true_peak_dbtp=_db(self._step_peak),
        )
