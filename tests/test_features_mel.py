"""The pure log-mel DSP equals librosa 0.10.2.post1 (musicnn's front end) on real music."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from audio_helpers import CLIP_PATH
from hypothesis import given
from hypothesis import strategies as st

from streamclf.features import mel


@pytest.fixture(scope="module")
def clip_16k() -> np.ndarray:
    y, _ = librosa.load(CLIP_PATH, sr=mel.SAMPLE_RATE_HZ)
    return y


class TestContract:
    """Seconds become frames as docs/architecture.md says."""

    @pytest.mark.parametrize(("seconds", "frames"), [(3, 187), (1, 62), (0.5, 31)])
    def test_frames_for_seconds(self, seconds, frames):
        assert mel.frames_for_seconds(seconds) == frames

    def test_frame_count_of_30_s(self):
        assert mel.n_frames_centered(30 * mel.SAMPLE_RATE_HZ) == 1876


class TestSlidingRows:
    """The strided view the framer and the incremental runner use is numpy's sliding window."""

    @given(rows=st.integers(0, 40), width=st.integers(1, 12), step=st.integers(1, 5),
           tail=st.sampled_from([(), (3,), (2, 4)]))  # fmt: skip
    def test_equals_sliding_window_view(self, rows, width, step, tail):
        x = np.arange(rows * int(np.prod(tail)), dtype=np.float32).reshape(rows, *tail)
        got = mel.sliding_rows(x, width, step)
        if rows < width:
            assert got.shape == (0, width, *tail)
            return
        want = np.lib.stride_tricks.sliding_window_view(x, width, axis=0)[::step]
        np.testing.assert_array_equal(got, np.moveaxis(want, -1, 1))
        assert not got.flags.writeable and np.shares_memory(got, x)


class TestMelFilterbank:
    """Our Slaney filterbank is librosa.filters.mel with musicnn's arguments."""

    def test_equals_librosa(self):
        ours = mel.mel_filterbank()
        ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=96)
        assert ours.shape == ref.shape == (96, 257)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)

    @pytest.mark.parametrize("n_mels", [40, 128])
    def test_other_sizes_equal_librosa(self, n_mels):
        ref = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=n_mels, fmin=30.0, fmax=9000.0)
        ours = mel.mel_filterbank(sr=22050, n_fft=1024, n_mels=n_mels, fmin_hz=30.0, fmax_hz=9000.0)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)

    def test_mel_scale_round_trip(self):
        hz = np.array([0.0, 440.0, 999.0, 1000.0, 4000.0, 8000.0])
        np.testing.assert_allclose(mel.hz_to_mel_slaney(hz), librosa.hz_to_mel(hz))
        np.testing.assert_allclose(mel.mel_to_hz_slaney(mel.hz_to_mel_slaney(hz)), hz)


class TestMelSpectrogram:
    """Batch mel power (before the float16 cast) matches librosa within 1e-5 relative."""

    def test_matches_librosa_on_the_clip(self, clip_16k):
        ref = librosa.feature.melspectrogram(
            y=clip_16k, sr=16000, n_fft=512, hop_length=256, n_mels=96
        ).T
        ours = mel.melspectrogram(clip_16k)
        assert ours.shape == ref.shape == (1876, 96)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=0)

    def test_short_signal_frame_count(self, rng):
        y = rng.standard_normal(700).astype(np.float32)
        ref = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=256, n_mels=96)
        ours = mel.melspectrogram(y)
        assert ours.shape == ref.T.shape == (1 + 700 // 256, 96)
        np.testing.assert_allclose(ours, ref.T, rtol=1e-5, atol=1e-9)


class TestCompression:
    """musicnn's float16 quantisation with the log taken in float32 (the NumPy 2 trap)."""

    def test_loud_music_stays_finite(self):
        power = np.array([[0.0, 1.0, 6.6, 100.0, 6e4]], dtype=np.float32)
        out = mel.compress(power)
        assert out.dtype == np.float32
        assert np.isfinite(out).all()
        # a float16 product would overflow to inf above 6.55; ours is log10(10000 * x + 1)
        np.testing.assert_allclose(out[0, 3], np.log10(1e6 + 1), rtol=1e-6)

    def test_equals_float16_quantised_log(self, rng):
        power = rng.exponential(0.05, size=(50, 96)).astype(np.float32)
        expected = np.log10(10000 * power.astype(np.float16).astype(np.float64) + 1)
        np.testing.assert_allclose(mel.compress(power), expected, rtol=1e-6)
        assert not np.array_equal(mel.compress(power), np.log10(10000 * power + 1))

    def test_logmel_of_the_clip_equals_librosa_reference(self, clip_16k):
        ref = librosa.feature.melspectrogram(
            y=clip_16k, sr=16000, n_fft=512, hop_length=256, n_mels=96
        ).T.astype(np.float16)
        expected = np.log10(10000 * ref.astype(np.float32) + 1)
        ours = mel.logmel(clip_16k)
        # 1e-7 power differences may flip a float16 rounding: at most one float16 step apart
        np.testing.assert_allclose(ours, expected, atol=5e-4)
        assert np.mean(ours == expected) > 0.99
