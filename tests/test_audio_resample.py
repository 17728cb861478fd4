"""Downmix-then-resample equals librosa.load(sr=16000), streamed in any block sizes."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr
from audio_helpers import CLIP_PATH

from streamclf.audio.resample import Resampler, downmix, resampled_length


def stream(resampler: Resampler, x: np.ndarray, size: int) -> np.ndarray:
    parts = [resampler.push(x[i : i + size]) for i in range(0, len(x), size)]
    return np.concatenate([*parts, resampler.flush()])


class TestStreamingEqualsOneShot:
    """As python-soxr's own tests: the stream equals the one-shot call exactly."""

    @pytest.mark.parametrize("size", [17, 509, 44100])
    @pytest.mark.parametrize("length", [0, 100, 31999, 100_000])
    def test_chunk_sizes_and_lengths(self, rng, size, length):
        x = rng.uniform(-1, 1, size=(length, 2)).astype(np.float32)
        ours = stream(Resampler(44100, 2), x, size)
        one_shot = soxr.resample(x.mean(axis=1, dtype=np.float32), 44100, 16000, quality="HQ")
        np.testing.assert_array_equal(ours, one_shot)

    def test_clip_equals_librosa_load(self):
        import librosa

        x, rate = sf.read(CLIP_PATH, dtype="float32", always_2d=True)
        ours = stream(Resampler(rate, 2), x, 4410)[: resampled_length(len(x), in_rate=rate)]
        ref, _ = librosa.load(CLIP_PATH, sr=16000)
        np.testing.assert_array_equal(ours, ref)


class TestMixing:
    """Channel mean before resampling, or one chosen channel; 16 kHz passes through."""

    def test_pick_a_channel(self, rng):
        x = np.stack([np.zeros(8000), rng.uniform(-1, 1, 8000)], axis=1).astype(np.float32)
        assert np.all(stream(Resampler(48000, 2, mix=0), x, 1000) == 0)
        assert np.any(stream(Resampler(48000, 2, mix=1), x, 1000) != 0)

    def test_passthrough_at_16k(self, rng):
        x = rng.uniform(-1, 1, size=(5000, 3)).astype(np.float32)
        np.testing.assert_array_equal(stream(Resampler(16000, 3), x, 999), downmix(x))

    def test_reset_forgets_buffered_input(self, rng):
        x = rng.uniform(-1, 1, size=(20000, 1)).astype(np.float32)
        r = Resampler(22050, 1)
        r.push(np.ones((3000, 1), np.float32))
        r.reset()
        np.testing.assert_array_equal(stream(r, x, 4096), stream(Resampler(22050, 1), x, 4096))

    @pytest.mark.parametrize("rate", [16000, 44100, 48000])
    def test_held_samples_are_what_the_input_still_gives(self, rng, rate):
        """What a stream worker counts on to wake when a window's audio is in: the samples
        given so far plus those held are the input's length at 16 kHz."""
        r = Resampler(rate, 2)
        given = pushed = 0
        for size in rng.integers(1, 5000, size=40):
            given += r.push(rng.uniform(-1, 1, size=(size, 2)).astype(np.float32)).shape[0]
            pushed += size
            assert given + r.held_samples() == pytest.approx(pushed * 16000 / rate, abs=1e-6)

    @pytest.mark.parametrize("mix", [2, -1, "left"])
    def test_invalid_mix(self, mix):
        with pytest.raises(ValueError, match="mix must be"):
            Resampler(44100, 2, mix=mix)

    def test_length_rule(self):
        assert resampled_length(1_323_000, in_rate=44100) == 480_000
        assert resampled_length(1, in_rate=44100) == 1
