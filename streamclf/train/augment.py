"""Audio augmentation of whole 16 kHz mono signals, before framing (pure numpy + soxr).

An `Augmentation` is a frozen draw of every parameter (gain, time shift, noise SNR and seed,
speed factor), so applying it is deterministic and its `key` can name a cached embedding.
The speed change resamples with soxr, which moves pitch and tempo together (like a turntable's
pitch fader); ±4 % is about ±0.7 semitone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import soxr

from streamclf.features.mel import SAMPLE_RATE_HZ


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges the draws come from; `copies` augmented versions of each training file."""

    copies: int = 2
    gain_db: float = 6.0  # uniform in ±gain_db
    shift_s: float = 1.5  # uniform delay in [0, shift_s]: moves the window grid over the music
    snr_db: tuple[float, float] = (15.0, 40.0)  # white noise at a uniform SNR in this range
    speed: float = 0.04  # speed factor uniform in 1 ± speed


@dataclass(frozen=True)
class Augmentation:
    """One set of drawn parameters; `apply` is a pure function of it and the signal."""

    gain_db: float
    shift_samples: int
    snr_db: float
    noise_seed: int
    speed: float

    @property
    def key(self) -> str:
        return ",".join(f"{k}={v:.6g}" for k, v in asdict(self).items())

    def apply(self, y: np.ndarray) -> np.ndarray:
        """y float32 [n] at 16 kHz → augmented float32 [m] (m ≈ (n + shift) / speed)."""
        y = change_speed(y, factor=self.speed)
        y = time_shift(y, samples=self.shift_samples)
        y = apply_gain(y, gain_db=self.gain_db)
        return add_noise(y, snr_db=self.snr_db, rng=np.random.default_rng(self.noise_seed))


def draw(rng: np.random.Generator, config: AugmentConfig) -> Augmentation:
    """Draw one augmentation from `config`'s ranges."""
    return Augmentation(
        gain_db=float(rng.uniform(-config.gain_db, config.gain_db)),
        shift_samples=int(rng.integers(0, int(config.shift_s * SAMPLE_RATE_HZ) + 1)),
        snr_db=float(rng.uniform(*config.snr_db)),
        noise_seed=int(rng.integers(2**31)),
        speed=float(rng.uniform(1.0 - config.speed, 1.0 + config.speed)),
    )


def apply_gain(y: np.ndarray, *, gain_db: float) -> np.ndarray:
    """y [n] scaled by gain_db decibels (log-mel is not scale-invariant, so this matters)."""
    return (y * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def time_shift(y: np.ndarray, *, samples: int) -> np.ndarray:
    """y [n] delayed by `samples` zeros → [n + samples]; the window grid lands elsewhere."""
    return np.concatenate((np.zeros(samples, np.float32), y.astype(np.float32)))


def add_noise(y: np.ndarray, *, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """y [n] plus white noise whose power is the signal's mean power minus snr_db decibels."""
    power = float(np.mean(np.square(y, dtype=np.float64))) if y.size else 0.0
    if power == 0.0:
        return y.astype(np.float32)
    sigma = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (y + sigma * rng.standard_normal(y.shape)).astype(np.float32)


def change_speed(y: np.ndarray, *, factor: float) -> np.ndarray:
    """y [n] played `factor` times faster (pitch and tempo) → [≈ n / factor], via soxr HQ."""
    if factor == 1.0:
        return y.astype(np.float32)
    out_rate = SAMPLE_RATE_HZ / factor
    return soxr.resample(y.astype(np.float32), SAMPLE_RATE_HZ, out_rate, quality="HQ")
