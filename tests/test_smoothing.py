"""Smoothing: EMA with a time constant, silence gate, hysteresis with margin and dwell, unknown."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamclf.config import SmoothingConfig
from streamclf.errors import ModelError
from streamclf.smoothing import (
    SILENCE,
    UNKNOWN,
    ConfidenceGate,
    Hysteresis,
    Smoother,
    ema_alpha,
)

LABELS = ("rock", "pop", "jazz", "guitar", "female vocalists", "techno")
GENRES = ("rock", "pop", "jazz", "techno")
LOUD_DBFS = -20.0


def probs(**values: float) -> np.ndarray:
    """A tag vector with the given labels set (spaces as underscores) and the rest at 0.05."""
    out = np.full(len(LABELS), 0.05, dtype=np.float32)
    for name, p in values.items():
        out[LABELS.index(name.replace("_", " "))] = p
    return out


def smoother(**overrides) -> Smoother:
    """Unknown-threshold off unless a test sets it: these tests are about the average and
    hysteresis."""
    return Smoother(SmoothingConfig(**{"unknown_threshold": 0.0, **overrides}), labels=LABELS,
                    genres=GENRES)


class TestEma:
    """The average follows a step with the configured time constant, whatever the hop."""

    @pytest.mark.parametrize("hop_s", [0.25, 0.5, 1.0, 3.0])
    def test_step_response_matches_time_constant(self, hop_s):
        tau = 5.0
        s = smoother(time_constant_s=tau, min_dwell_s=0.0)
        s.update(probs(rock=0.0), 0.0, LOUD_DBFS)
        t = 0.0
        while t < 3 * tau - 1e-9:
            t += hop_s
            state = s.update(probs(rock=1.0), t, LOUD_DBFS)
        expected = 1.0 - math.exp(-t / tau)
        assert state.smoothed[LABELS.index("rock")] == pytest.approx(expected, abs=1e-5)
        assert state.instant[LABELS.index("rock")] == 1.0

    def test_alpha(self):
        assert ema_alpha(dt_s=1.0, time_constant_s=0.0) == 1.0
        assert ema_alpha(dt_s=2.0, time_constant_s=2.0) == pytest.approx(1 - math.exp(-1))
        assert ema_alpha(dt_s=-1.0, time_constant_s=2.0) == 0.0

    def test_zero_time_constant_is_no_smoothing(self):
        s = smoother(time_constant_s=0.0)
        s.update(probs(rock=0.9), 0.0, LOUD_DBFS)
        state = s.update(probs(rock=0.1), 1.0, LOUD_DBFS)
        np.testing.assert_array_equal(state.smoothed, state.instant)


class TestSilence:
    """Quiet windows are published as silence and never enter the average."""

    def test_silence_published_and_not_averaged(self):
        s = smoother(silence_dbfs=-55.0)
        s.update(probs(rock=0.8), 0.0, LOUD_DBFS)
        before = s.update(probs(rock=0.8), 1.0, LOUD_DBFS).smoothed
        for t in range(2, 10):
            state = s.update(probs(pop=1.0, rock=0.0), float(t), -70.0)
            assert (state.genre, state.raw_genre, state.silence) == (SILENCE, SILENCE, True)
            assert state.confidence == 0.0
            np.testing.assert_array_equal(state.smoothed, before)

    def test_nan_and_minus_inf_level_are_silence(self):
        s = smoother()
        assert s.update(probs(rock=0.9), 0.0, float("nan")).silence
        assert s.update(probs(rock=0.9), 1.0, float("-inf")).silence

    def test_change_events_around_silence(self):
        s = smoother()
        events = [s.update(probs(rock=0.9), t, lvl) for t, lvl in
                  [(0.0, LOUD_DBFS), (1.0, -90.0), (2.0, -90.0), (3.0, LOUD_DBFS)]]
        assert [(e.previous, e.genre) for e in events if e.changed] == [
            ("", "rock"), ("rock", SILENCE), (SILENCE, "rock")]

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=40))
    def test_silent_windows_never_change_the_average(self, steps):
        """The EMA after a sequence equals the EMA of the same sequence with silent windows
        removed."""
        gated, clean = smoother(), smoother()
        last_clean = None
        for i, (p, silent) in enumerate(steps):
            state = gated.update(probs(rock=p), float(i), -90.0 if silent else LOUD_DBFS)
            if not silent:
                last_clean = clean.update(probs(rock=p), float(i), LOUD_DBFS)
        if last_clean is not None:
            np.testing.assert_allclose(state.smoothed, last_clean.smoothed, atol=1e-6)


class TestHysteresis:
    """The published genre changes only on a lead of switch_margin held for min_dwell_s."""

    def test_first_window_adopts_leader(self):
        state = smoother().update(probs(jazz=0.7), 0.0, LOUD_DBFS)
        assert (state.genre, state.changed, state.previous) == ("jazz", True, "")
        assert state.confidence == pytest.approx(0.7)

    def test_switch_after_dwell(self):
        s = smoother(time_constant_s=0.0, switch_margin=0.1, min_dwell_s=3.0)
        s.update(probs(rock=0.8), 0.0, LOUD_DBFS)
        genres = [s.update(probs(rock=0.3, pop=0.8), float(t), LOUD_DBFS).genre
                  for t in range(1, 6)]
        assert genres == ["rock", "rock", "rock", "pop", "pop"]  # lead from t=1, switch at t=4

    def test_small_lead_never_switches(self):
        s = smoother(time_constant_s=0.0, switch_margin=0.1, min_dwell_s=0.0)
        s.update(probs(rock=0.5), 0.0, LOUD_DBFS)
        states = [s.update(probs(rock=0.5, pop=0.59), float(t), LOUD_DBFS) for t in range(1, 30)]
        assert {st_.genre for st_ in states} == {"rock"}
        assert not any(st_.changed for st_ in states)
        assert {st_.raw_genre for st_ in states} == {"pop"}

    def test_interrupted_lead_restarts_dwell(self):
        h = Hysteresis(margin=0.1, dwell_s=2.0)
        a, b = np.array([0.9, 0.1]), np.array([0.1, 0.9])
        assert [h.step(x, t) for t, x in enumerate([a, b, b, a, b, b, b])] == [0, 0, 0, 0, 0, 0, 1]

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), min_size=2, max_size=60),
           st.floats(0.0, 0.3), st.floats(0.0, 5.0), st.sampled_from([0.5, 1.0, 3.0]))
    def test_never_flaps(self, rows, margin, dwell_s, hop_s):
        """Between two genre changes at least min_dwell_s passes, and each switch was earned."""
        s = smoother(time_constant_s=2.0, switch_margin=margin, min_dwell_s=dwell_s)
        change_times = []
        for i, row in enumerate(rows):
            t = i * hop_s
            state = s.update(probs(rock=row[0], pop=row[1], jazz=row[2], techno=row[3]), t,
                             LOUD_DBFS)
            if state.changed and state.previous:
                change_times.append(t)
                scores = {g: state.smoothed[LABELS.index(g)] for g in GENRES}
                assert scores[state.genre] - scores[state.previous] >= margin - 1e-6
        gaps = np.diff(change_times)
        assert np.all(gaps >= dwell_s - 1e-9)
        assert np.all(gaps > 0)

    def test_reconfigure_keeps_state(self):
        s = smoother(time_constant_s=0.0, min_dwell_s=10.0)
        s.update(probs(rock=0.9), 0.0, LOUD_DBFS)
        s.update(probs(pop=0.9, rock=0.1), 1.0, LOUD_DBFS)
        s.reconfigure(SmoothingConfig(time_constant_s=0.0, min_dwell_s=0.5))
        state = s.update(probs(pop=0.9, rock=0.1), 2.0, LOUD_DBFS)
        assert (state.previous, state.genre) == ("rock", "pop")
        assert s.windows == 3

    def test_reset_forgets(self):
        s = smoother()
        s.update(probs(rock=0.9), 0.0, LOUD_DBFS)
        s.reset()
        state = s.update(probs(pop=0.9), 0.0, LOUD_DBFS)
        assert (state.previous, state.genre, s.windows) == ("", "pop", 1)


class TestUnknown:
    """Under unknown_threshold the genre is "unknown" with the top 3 smoothed candidates."""

    def test_unknown_with_candidates(self):
        s = smoother(unknown_threshold=0.5)
        state = s.update(probs(rock=0.3, pop=0.2, jazz=0.1, techno=0.01), 0.0, LOUD_DBFS)
        assert state.genre == UNKNOWN
        assert state.confidence == pytest.approx(0.3)
        assert [c[0] for c in state.candidates] == ["rock", "pop", "jazz"]
        assert state.candidates[0][1] == pytest.approx(0.3)

    def test_confident_genre_has_no_candidates(self):
        state = smoother(unknown_threshold=0.5).update(probs(rock=0.8), 0.0, LOUD_DBFS)
        assert (state.genre, state.candidates) == ("rock", None)

    def test_held_genre_under_threshold_turns_unknown_at_once(self):
        """The held genre fades under the threshold while the next has not yet earned the switch:
        "unknown", never the old genre at a confidence under the threshold."""
        s = smoother(unknown_threshold=0.35, time_constant_s=0.0, switch_margin=0.1,
                     min_dwell_s=3.0)
        assert s.update(probs(techno=0.8), 0.0, LOUD_DBFS).genre == "techno"
        states = [s.update(probs(techno=0.15, jazz=0.7), float(t), LOUD_DBFS) for t in (1, 2, 3)]
        assert [x.genre for x in states] == [UNKNOWN, UNKNOWN, UNKNOWN]
        assert states[0].changed and not states[1].changed
        assert states[0].candidates[0] == ["jazz", pytest.approx(0.7)]
        assert s.update(probs(techno=0.15, jazz=0.7), 4.0, LOUD_DBFS).genre == "jazz"

    def test_score_hovering_near_threshold_does_not_flip(self):
        """Around the threshold the genre drops to unknown once and stays there until it clears
        threshold + margin for the dwell time."""
        s = smoother(unknown_threshold=0.35, time_constant_s=0.0, switch_margin=0.1,
                     min_dwell_s=2.0)
        hovering = [0.38, 0.33, 0.37, 0.31, 0.36, 0.34, 0.38, 0.32, 0.37, 0.33]
        genres = [s.update(probs(techno=p), float(t), LOUD_DBFS).genre
                  for t, p in enumerate(hovering)]
        assert genres == ["techno"] + [UNKNOWN] * (len(hovering) - 1)
        t0 = len(hovering)
        back = [s.update(probs(techno=0.5), float(t0 + k), LOUD_DBFS).genre for k in range(4)]
        assert back == [UNKNOWN, UNKNOWN, "techno", "techno"]  # 0.5 >= 0.45 from t0, dwell 2 s

    def test_threshold_zero_never_gates(self):
        s = smoother(unknown_threshold=0.0, time_constant_s=0.0, switch_margin=0.1)
        assert {s.update(probs(rock=p), float(t), LOUD_DBFS).genre
                for t, p in enumerate([0.9, 0.01, 0.0, 0.2])} == {"rock"}

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), min_size=2, max_size=60),
           st.floats(0.05, 0.6), st.floats(0.0, 0.3), st.floats(0.0, 5.0),
           st.sampled_from([0.5, 1.0, 3.0]))
    def test_published_genre_never_under_threshold(self, rows, threshold, margin, dwell_s, hop_s):
        """Whatever the music, a published genre has a confidence of at least the threshold."""
        s = smoother(unknown_threshold=threshold, time_constant_s=2.0, switch_margin=margin,
                     min_dwell_s=dwell_s)
        for i, row in enumerate(rows):
            state = s.update(probs(rock=row[0], pop=row[1], jazz=row[2], techno=row[3]),
                             i * hop_s, LOUD_DBFS)
            assert state.genre == UNKNOWN or state.confidence >= threshold


class TestPublishedGenres:
    """A validated head decides among every family but publishes only its validated genres,
    each at its own threshold."""

    @staticmethod
    def validated(**overrides) -> Smoother:
        config = SmoothingConfig(**{"unknown_threshold": 0.35, "time_constant_s": 0.0,
                                    **overrides})
        return Smoother(config, labels=LABELS, genres=GENRES, published=("rock", "jazz"),
                        thresholds={"rock": 0.3, "jazz": 0.6})

    def test_an_unpublished_family_reads_unknown_with_it_first(self):
        """pop leads at 0.9: unknown with pop first, never rock (the best published genre)."""
        state = self.validated().update(probs(pop=0.9, rock=0.4), 0.0, LOUD_DBFS)
        assert state.genre == UNKNOWN
        assert [c[0] for c in state.candidates][:2] == ["pop", "rock"]

    def test_each_genre_at_its_own_threshold(self):
        s = self.validated()
        assert s.update(probs(rock=0.32), 0.0, LOUD_DBFS).genre == "rock"  # over rock's 0.3
        s = self.validated()
        assert s.update(probs(jazz=0.5), 0.0, LOUD_DBFS).genre == UNKNOWN  # under jazz's 0.6
        assert s.update(probs(jazz=0.7), 1.0, LOUD_DBFS).genre == "jazz"

    def test_reconfigure_with_one_threshold_for_all(self):
        s = self.validated()
        s.reconfigure(SmoothingConfig(unknown_threshold=0.2, time_constant_s=0.0), {})
        assert s.update(probs(jazz=0.5), 0.0, LOUD_DBFS).genre == "jazz"  # 0.2 for all now
        s.reconfigure(SmoothingConfig(unknown_threshold=0.2, time_constant_s=0.0))
        assert s.update(probs(pop=0.9), 1.0, LOUD_DBFS).genre == UNKNOWN  # still unpublished

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), min_size=2, max_size=40),
           st.floats(0.0, 0.3), st.floats(0.0, 3.0))
    def test_never_publishes_an_unvalidated_family_or_under_its_threshold(self, rows, margin,
                                                                         dwell_s):
        s = self.validated(time_constant_s=2.0, switch_margin=margin, min_dwell_s=dwell_s)
        for i, row in enumerate(rows):
            state = s.update(probs(rock=row[0], pop=row[1], jazz=row[2], techno=row[3]),
                             float(i), LOUD_DBFS)
            assert state.genre in (UNKNOWN, "rock", "jazz")
            if state.genre != UNKNOWN:
                assert state.confidence >= {"rock": 0.3, "jazz": 0.6}[state.genre]


class TestConfidenceGate:
    """The gate alone: closes at once under the threshold, reopens on threshold + margin held."""

    def test_reopens_after_dwell(self):
        gate = ConfidenceGate(threshold=0.3, margin=0.1, dwell_s=2.0)
        scores = [0.5, 0.2, 0.45, 0.45, 0.39, 0.41, 0.41, 0.41, 0.31, 0.29]
        opened = [gate.step(x, float(t), new_genre=t == 0) for t, x in enumerate(scores)]
        assert opened == [True, False, False, False, False, False, False, True, True, False]

    def test_new_genre_judged_on_threshold_alone(self):
        gate = ConfidenceGate(threshold=0.3, margin=0.1, dwell_s=5.0)
        assert not gate.step(0.2, 0.0, new_genre=True)
        assert gate.step(0.31, 1.0, new_genre=True)


class TestContract:
    def test_genres_must_be_labels(self):
        with pytest.raises(ModelError, match="blues"):
            Smoother(SmoothingConfig(), labels=LABELS, genres=("rock", "blues"))

    def test_wrong_vector_size(self):
        with pytest.raises(ModelError, match="tag probabilities"):
            smoother().update(np.zeros(3, np.float32), 0.0, LOUD_DBFS)


class TestNonFiniteProbabilities:
    """A window with NaN or infinite probabilities (an FP16 overflow in the engine) is counted
    and refused: the average, the held genre and later windows are as if it never came."""

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_refused_and_counted(self, bad):
        s, clean = smoother(time_constant_s=2.0), smoother(time_constant_s=2.0)
        for t in (0.0, 1.0):
            s.update(probs(rock=0.9), t, LOUD_DBFS)
            clean.update(probs(rock=0.9), t, LOUD_DBFS)
        broken = probs(rock=0.9)
        broken[LABELS.index("pop")] = bad
        held = s.update(broken, 2.0, LOUD_DBFS)
        assert (held.genre, held.changed, s.non_finite) == ("rock", False, 1)
        assert np.isfinite(held.smoothed).all() and np.isfinite(held.confidence)
        after = s.update(probs(pop=0.9), 3.0, LOUD_DBFS)
        expected = clean.update(probs(pop=0.9), 3.0, LOUD_DBFS)
        np.testing.assert_array_equal(after.smoothed, expected.smoothed)

    def test_first_window_refused(self):
        s = smoother()
        state = s.update(np.full(len(LABELS), np.nan, np.float32), 0.0, LOUD_DBFS)
        assert (state.genre, state.confidence, s.non_finite) == (UNKNOWN, 0.0, 1)
        assert s.update(probs(jazz=0.9), 1.0, LOUD_DBFS).genre == "jazz"
