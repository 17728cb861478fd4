"""Audio augmentation: each transform does what its parameter says, and a draw replays exactly."""

from __future__ import annotations

import numpy as np
import pytest

from streamclf.features.mel import SAMPLE_RATE_HZ
from streamclf.train.augment import (
    AugmentConfig,
    add_noise,
    apply_gain,
    change_speed,
    draw,
    time_shift,
)


def _tone(freq_hz: float, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    return (0.3 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _peak_hz(y: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE_HZ)[spectrum.argmax()])


class TestTransforms:
    def test_gain_in_decibels(self, rng: np.random.Generator) -> None:
        y = rng.standard_normal(1000).astype(np.float32)
        out = apply_gain(y, gain_db=-6.0)
        assert out.dtype == np.float32
        assert 20 * np.log10(np.abs(out).sum() / np.abs(y).sum()) == pytest.approx(-6.0, abs=1e-4)

    def test_shift_delays_by_zeros(self, rng: np.random.Generator) -> None:
        y = rng.standard_normal(100).astype(np.float32)
        out = time_shift(y, samples=7)
        assert len(out) == 107 and not out[:7].any() and np.array_equal(out[7:], y)

    @pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
    def test_noise_at_the_requested_snr(self, rng: np.random.Generator, snr_db: float) -> None:
        y = _tone(440.0)
        noisy = add_noise(y, snr_db=snr_db, rng=rng)
        measured = 10 * np.log10(
            np.mean(y.astype(np.float64) ** 2) / np.mean((noisy - y).astype(np.float64) ** 2)
        )
        assert measured == pytest.approx(snr_db, abs=0.3)

    def test_noise_leaves_silence_silent(self, rng: np.random.Generator) -> None:
        assert not add_noise(np.zeros(100, np.float32), snr_db=10.0, rng=rng).any()

    @pytest.mark.parametrize("factor", [0.96, 1.04])
    def test_speed_moves_pitch_and_length_together(self, factor: float) -> None:
        y = _tone(1000.0)
        out = change_speed(y, factor=factor)
        assert len(out) == pytest.approx(len(y) / factor, abs=2)
        assert _peak_hz(out) == pytest.approx(1000.0 * factor, abs=2.0)

    def test_unit_speed_is_identity(self) -> None:
        y = _tone(300.0)
        assert np.array_equal(change_speed(y, factor=1.0), y)


class TestDraws:
    def test_draws_stay_in_range_and_replay(self) -> None:
        config = AugmentConfig(gain_db=3.0, shift_s=0.5, snr_db=(20.0, 30.0), speed=0.02)
        draws = [draw(np.random.default_rng(5), config) for _ in range(2)]
        assert draws[0] == draws[1]
        many = [draw(np.random.default_rng(s), config) for s in range(50)]
        assert all(
            abs(a.gain_db) <= 3.0
            and 0 <= a.shift_samples <= 8000
            and 20 <= a.snr_db <= 30
            and abs(a.speed - 1) <= 0.02
            for a in many
        )
        assert len({a.key for a in many}) == 50

    def test_apply_is_a_pure_function_of_the_draw(self) -> None:
        aug = draw(np.random.default_rng(1), AugmentConfig())
        y = _tone(220.0, seconds=3.0)
        first, second = aug.apply(y), aug.apply(y)
        assert np.array_equal(first, second)
        assert not np.array_equal(first[: len(y)], y)
