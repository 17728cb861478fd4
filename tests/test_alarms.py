"""Alarms: each starts once when its condition has held long enough and ends once it is gone.

The level alarms are fed real loudness readings (libebur128 on generated programme: tone,
silence, a hot tone, a loud tone), so their timing is checked in stream time end to end.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_loudness import RATE_HZ, sine

from streamclf.alarms import (
    ENGINE,
    INPUT,
    LOUDNESS,
    SILENCE,
    TRUE_PEAK,
    Debounce,
    HealthAlarms,
    LevelAlarms,
    LevelStage,
)
from streamclf.config import AlarmsConfig
from streamclf.loudness import LoudnessMeter

CONFIG = AlarmsConfig(silence_s=5.0, loudness_s=10.0, clear_s=1.0)


def run_levels(audio: np.ndarray, config: AlarmsConfig = CONFIG, chunk: int = 2400):
    stage = LevelStage(LoudnessMeter(RATE_HZ, audio.shape[1]), config)
    events = [e for start in range(0, len(audio), chunk)
              for e in stage.push(audio[start:start + chunk])]
    return events, stage


class TestDebounce:
    """On after `on_after_s` of the condition, off after `clear_s` without it; no chatter."""

    def test_on_and_off(self):
        d = Debounce(on_after_s=2.0, clear_s=1.0)
        flips = [t for t, c in [(0, True), (1, True), (2, True), (3, False), (3.5, True),
                                (4, False), (4.9, False), (5, False)] if d.update(c, t)]
        assert flips == [2, 5]
        assert not d.active

    def test_a_short_condition_never_starts(self):
        d = Debounce(on_after_s=2.0, clear_s=1.0)
        assert not any(d.update(c, t) for t, c in [(0, True), (1.9, True), (2.0, False)])


class TestLevelAlarms:
    """Silence, true peak and loudness on real R128 readings of generated programme."""

    def test_silence_starts_after_silence_s_and_ends_after_clear_s(self):
        audio = np.concatenate([sine(dbfs=-20, seconds=5), np.zeros((RATE_HZ * 8, 2), np.float32),
                                sine(dbfs=-20, seconds=3)])
        events, stage = run_levels(audio)
        silence = [e for e in events if e.kind == SILENCE]
        assert [e.active for e in silence] == [True, False]
        # momentary loudness drops under -60 LUFS within 0.4 s of the silence (at 5 s)
        assert 10.0 <= silence[0].t_s <= 10.5
        assert silence[0].value < CONFIG.silence_lufs == silence[0].threshold
        assert 14.0 <= silence[1].t_s <= 14.5  # music back at 13 s, + clear_s
        assert stage.alarms.active == []

    def test_true_peak_over_ceiling_starts_at_once(self):
        audio = np.concatenate([sine(dbfs=-20, seconds=2), sine(dbfs=-0.5, seconds=1),
                                sine(dbfs=-20, seconds=3)])
        events, _ = run_levels(audio)
        peaks = [e for e in events if e.kind == TRUE_PEAK]
        assert [e.active for e in peaks] == [True, False]
        assert peaks[0].t_s == pytest.approx(2.1) and peaks[0].value == pytest.approx(-0.5, abs=0.2)
        assert 4.0 <= peaks[1].t_s <= 4.3  # the true-peak interpolator's tail, then clear_s

    def test_loud_programme_raises_loudness_above_target(self):
        audio = np.concatenate([sine(dbfs=-23, seconds=5), sine(dbfs=-12, seconds=15),
                                sine(dbfs=-23, seconds=6)])
        events, _ = run_levels(audio)
        loudness = [e for e in events if e.kind == LOUDNESS]
        assert [(e.active, e.detail) for e in loudness] == [(True, "above target"), (False, "")]
        # short-term loudness leaves -23 ± 2 within its 3 s window after 5 s, then 10 s more
        assert 15.0 <= loudness[0].t_s <= 18.0
        assert loudness[0].value == pytest.approx(-12.0, abs=0.2)

    def test_on_target_programme_raises_nothing(self):
        events, _ = run_levels(sine(dbfs=-23, seconds=30))
        assert events == []

    def test_a_zero_duration_turns_an_alarm_off(self):
        config = dataclasses.replace(CONFIG, silence_s=0.0, true_peak_enabled=False)
        audio = np.concatenate([np.zeros((RATE_HZ * 8, 2), np.float32), sine(dbfs=0, seconds=1)])
        events, _ = run_levels(audio, config)
        assert events == []

    def test_reconfigure_keeps_an_active_alarm_until_it_clears(self):
        _, stage = run_levels(np.zeros((RATE_HZ * 7, 2), np.float32))
        assert stage.alarms.active == [SILENCE]
        stage.alarms.reconfigure(dataclasses.replace(CONFIG, silence_s=60.0))
        assert stage.alarms.active == [SILENCE]
        (end,) = stage.push(sine(dbfs=-23, seconds=2))
        assert (end.kind, end.active) == (SILENCE, False)
        assert LevelAlarms(CONFIG).active == []


class TestHealthAlarms:
    """Input lost or stalled, engine behind: on the daemon's clock."""

    def update(self, alarms, now, **changes):
        values = {"source_state": "running", "last_audio_s": now, "latency_ms": 100.0,
                  "dropped_windows": 0} | changes
        return list(alarms.update(now_s=now, **values))

    def test_lost_source_starts_and_recovery_ends_the_input_alarm(self):
        alarms = HealthAlarms(CONFIG)
        assert self.update(alarms, 0.0) == []
        (start,) = self.update(alarms, 1.0, source_state="lost", last_audio_s=0.5)
        assert (start.kind, start.active, start.detail) == (INPUT, True, "lost")
        assert self.update(alarms, 1.5) == []  # back, but not yet for clear_s
        (end,) = self.update(alarms, 2.6)
        assert (end.kind, end.active) == (INPUT, False)

    def test_stalled_running_source(self):
        alarms = HealthAlarms(CONFIG)
        assert self.update(alarms, 1.9, last_audio_s=0.0) == []
        (start,) = self.update(alarms, 2.1, last_audio_s=0.0)
        assert start.kind == INPUT and start.value == pytest.approx(2.1)
        assert alarms.active == [INPUT]

    def test_ended_file_is_not_an_alarm(self):
        assert self.update(HealthAlarms(CONFIG), 60.0, source_state="ended", last_audio_s=0.0) == []

    def test_engine_behind_on_latency_or_drops(self):
        alarms = HealthAlarms(CONFIG)
        (slow,) = self.update(alarms, 0.0, latency_ms=6000.0)
        assert (slow.kind, slow.active) == (ENGINE, True)
        assert self.update(alarms, 1.0) == []
        (ok,) = self.update(alarms, 2.1)
        assert not ok.active
        (dropped,) = self.update(alarms, 3.0, dropped_windows=3)
        assert dropped.active and dropped.detail == "windows dropped"
        assert self.update(alarms, 3.5, dropped_windows=3) == []
        (ok,) = self.update(alarms, 4.6, dropped_windows=3)
        assert not ok.active
