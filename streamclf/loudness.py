"""EBU R128 loudness of one stream, measured on the source's own audio by libebur128.

Loudness is measured before the resampler (the source's rate and channels), because true peak
and the K-weighted channel sum are defined on the programme as broadcast, not on the model's
16 kHz mono. The arithmetic is libebur128's (via `pyebur128`), not ours; this module only
streams audio into it and reads it out at fixed steps of stream time, so the readings do not
depend on how the audio was chunked.

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

STEP_S = 0.1  # one reading per 100 ms of audio: the R128 gating block hop and ffmpeg's log step
_MODE = (pyebur128.MeasurementMode.MODE_S | pyebur128.MeasurementMode.MODE_I
         | pyebur128.MeasurementMode.MODE_LRA | pyebur128.MeasurementMode.MODE_TRUE_PEAK
         | pyebur128.MeasurementMode.MODE_HISTOGRAM)


@dataclass(frozen=True)
class LoudnessReading:
    """The loudness of a stream at stream time `t_s` (seconds since the meter's last reset).

    Until 400 ms (momentary) or 3 s (short-term) of audio were seen, the rest of the window
    counts as silence, so those read low at first (ffmpeg's too); digital silence is -inf, and
    integrated loudness is -inf until a 400 ms block passes its gates. `step_true_peak_dbtp` is
    the true peak of the last step only (for clipping alarms), `true_peak_dbtp` the maximum
    since the reset.
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
    """Streams (frames, channels) float32 blocks into libebur128; yields one reading per step."""

    def __init__(self, sample_rate_hz: int, channels: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self._step_frames = round(STEP_S * sample_rate_hz)
        self.reset()

    def reset(self) -> None:
        """Forget all audio: after a gap nothing is computed from the audio before it."""
        self._state = pyebur128.R128State(self.channels, self.sample_rate_hz, _MODE)
        self._frames_in_step = 0
        self._steps = 0
        self._step_peak = 0.0

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
            self._step_peak = max(self._step_peak, self._last_true_peak())
            self._frames_in_step += take
            start += take
            if self._frames_in_step == self._step_frames:
                self._steps += 1
                yield self._reading()
                self._frames_in_step = 0
                self._step_peak = 0.0

    def _last_true_peak(self) -> float:
        return max(pyebur128.get_previous_true_peak(self._state, c) for c in range(self.channels))

    def _reading(self) -> LoudnessReading:
        state = self._state
        return LoudnessReading(
            t_s=self._steps * self._step_frames / self.sample_rate_hz,
            momentary_lufs=pyebur128.get_loudness_momentary(state),
            short_term_lufs=pyebur128.get_loudness_shortterm(state),
            integrated_lufs=pyebur128.get_loudness_global(state),
            range_lu=pyebur128.get_loudness_range(state),
            true_peak_dbtp=_db(max(pyebur128.get_true_peak(state, c)
                                   for c in range(self.channels))),
            step_true_peak_dbtp=_db(self._step_peak),
        )
