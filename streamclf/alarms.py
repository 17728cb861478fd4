"""Alarms with a start and an end: silence, true peak over a ceiling, loudness off target, input
lost or stalled, engine behind.

Each alarm is one small state machine (`Debounce`): its condition must hold for `on_after_s`
before it starts and be gone for `clear_s` before it ends, so a breath in a speech or a single
hot snare does not make a flurry of events; events come out only on transitions (the
silero-vad pattern). The level alarms (`LevelAlarms`) run on loudness readings in stream time,
on the stream worker; the health alarms (`HealthAlarms`) run on the monotonic clock in the
engine worker, which alone publishes. Thresholds come from `AlarmsConfig`; a duration of 0
turns that alarm off.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from streamclf.config import AlarmsConfig
from streamclf.loudness import LoudnessMeter, LoudnessReading

SILENCE = "silence"
TRUE_PEAK = "true_peak"
LOUDNESS = "loudness"
INPUT = "input"
ENGINE = "engine"
KINDS = (SILENCE, TRUE_PEAK, LOUDNESS, INPUT, ENGINE)


@dataclass(frozen=True)
class AlarmEvent:
    """An alarm started (`active`) or ended, at time `t_s` of the clock that drove it.

    `value` is the measurement that decided it (LUFS, dBTP, seconds of no audio, ms of latency)
    and `threshold` the configured limit it was compared with.
    """

    kind: str
    active: bool
    t_s: float
    value: float
    threshold: float
    detail: str = ""


class Debounce:
    """A condition that must hold `on_after_s` to start and be gone `clear_s` to end."""

    def __init__(self, *, on_after_s: float = 0.0, clear_s: float = 0.0) -> None:
        self.on_after_s = on_after_s
        self.clear_s = clear_s
        self.active = False
        self._since: float | None = None  # when the condition last changed against `active`

    def restart_clock(self) -> None:
        """Forget a pending change (the clock jumped); an active alarm stays on until it clears."""
        self._since = None

    def update(self, condition: bool, t_s: float) -> bool:
        """Feed the condition at time `t_s`; True when `active` flipped on this call."""
        if condition == self.active:
            self._since = None
            return False
        if self._since is None:
            self._since = t_s
        if t_s - self._since >= (self.clear_s if self.active else self.on_after_s):
            self.active = condition
            self._since = None
            return True
        return False


class LevelAlarms:
    """Silence, true peak and loudness alarms of one stream, fed its loudness readings."""

    def __init__(self, config: AlarmsConfig) -> None:
        self._silence, self._peak, self._loudness = Debounce(), Debounce(), Debounce()
        self.reconfigure(config)

    def reconfigure(self, config: AlarmsConfig) -> None:
        """New thresholds and durations; alarms that are on stay on until they clear."""
        self._config = config
        self._silence.on_after_s, self._loudness.on_after_s = config.silence_s, config.loudness_s
        for debounce in (self._silence, self._peak, self._loudness):
            debounce.clear_s = config.clear_s

    def reset(self) -> None:
        """Stream time restarts (after a gap): pending changes are forgotten, not active alarms."""
        for debounce in (self._silence, self._peak, self._loudness):
            debounce.restart_clock()

    @property
    def active(self) -> list[str]:
        return [kind for kind, d in ((SILENCE, self._silence), (TRUE_PEAK, self._peak),
                                     (LOUDNESS, self._loudness)) if d.active]

    def push(self, reading: LoudnessReading) -> Iterator[AlarmEvent]:
        """Yield the alarms that start or end with this reading."""
        c = self._config
        t = reading.t_s
        silent = reading.momentary_lufs < c.silence_lufs
        if c.silence_s > 0 and self._silence.update(silent, t):
            yield AlarmEvent(SILENCE, self._silence.active, t, reading.momentary_lufs,
                             c.silence_lufs)
        if c.true_peak_enabled and self._peak.update(
                reading.step_true_peak_dbtp > c.true_peak_ceiling_dbtp, t):
            yield AlarmEvent(TRUE_PEAK, self._peak.active, t, reading.step_true_peak_dbtp,
                             c.true_peak_ceiling_dbtp)
        short_term = reading.short_term_lufs
        off_target = (not silent and math.isfinite(short_term)
                      and abs(short_term - c.loudness_target_lufs) > c.loudness_tolerance_lu)
        if c.loudness_s > 0 and self._loudness.update(off_target, t):
            side = "above" if short_term > c.loudness_target_lufs else "below"
            yield AlarmEvent(LOUDNESS, self._loudness.active, t, short_term,
                             c.loudness_target_lufs,
                             detail=f"{side} target" if self._loudness.active else "")


class HealthAlarms:
    """Input lost or stalled and engine behind, for one stream, on the monotonic clock."""

    def __init__(self, config: AlarmsConfig) -> None:
        self._input, self._engine = Debounce(), Debounce()
        self._dropped = 0
        self.reconfigure(config)

    def reconfigure(self, config: AlarmsConfig) -> None:
        """New thresholds; alarms that are on stay on until they clear."""
        self._config = config
        self._input.clear_s = self._engine.clear_s = config.clear_s

    @property
    def active(self) -> list[str]:
        return [kind for kind, d in ((INPUT, self._input), (ENGINE, self._engine)) if d.active]

    def update(self, *, now_s: float, source_state: str, last_audio_s: float,
               latency_ms: float, dropped_windows: int) -> Iterator[AlarmEvent]:
        """Yield the alarms that start or end now.

        Input: the source is lost or failed, or no audio came for `input_stalled_s` while it
        says it runs. Engine: a window's sound-to-publish latency over `engine_latency_ms`, or
        windows dropped since the last call.
        """
        c = self._config
        if c.input_stalled_s > 0:
            silent_for = now_s - last_audio_s
            down = source_state in ("lost", "failed") or (
                source_state == "running" and silent_for > c.input_stalled_s)
            if self._input.update(down, now_s):
                yield AlarmEvent(INPUT, self._input.active, now_s, silent_for,
                                 c.input_stalled_s, detail=source_state)
        if c.engine_latency_ms > 0:
            dropped = dropped_windows > self._dropped
            self._dropped = dropped_windows
            behind = dropped or latency_ms > c.engine_latency_ms
            if self._engine.update(behind, now_s):
                yield AlarmEvent(ENGINE, self._engine.active, now_s, latency_ms,
                                 c.engine_latency_ms, detail="windows dropped" if dropped else "")


class LevelStage:
    """The stream worker's loudness stage: meter → level alarms, with the latest reading kept.

    `latest` is replaced (never mutated) on the stream worker and read by the engine worker for
    status messages and metrics.
    """

    def __init__(self, meter: LoudnessMeter, config: AlarmsConfig) -> None:
        self.meter = meter
        self.alarms = LevelAlarms(config)
        self.latest: LoudnessReading | None = None

    def push(self, block: np.ndarray) -> Iterator[AlarmEvent]:
        """Measure a (frames, channels) block of source audio; yield the alarms it starts/ends."""
        for reading in self.meter.push(block):
            self.latest = reading
            yield from self.alarms.push(reading)

    def reset(self) -> None:
        self.meter.reset()
        self.alarms.reset()
        self.latest = None
