"""The incremental framer equals the offline log-mel for any block sizes, and its windows
carry the right frames, times, levels and arrival stamps."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from audio_helpers import CLIP_PATH
from hypothesis import given, settings
from hypothesis import strategies as st

from streamclf.features.framer import (
    LogMelFramer,
    load_mono_16k,
    logmel_windows_for_file,
    stream_file_windows,
)
from streamclf.features.mel import HOP_LENGTH, WINDOW_FRAMES, logmel

WINDOW, HOP = 187, 62


def expected_windows(n_samples: int, window: int, hop: int) -> int:
    frames = 1 + n_samples // HOP_LENGTH
    return 0 if frames < window else (frames - window) // hop + 1


def stream(framer: LogMelFramer, y: np.ndarray, sizes) -> list:
    windows, i, k = [], 0, 0
    while i < len(y):
        size = sizes[k % len(sizes)]
        windows += framer.push(y[i : i + size], arrival=float(i + size))
        i, k = i + size, k + 1
    return windows + list(framer.flush())


@pytest.fixture
def music(rng) -> np.ndarray:
    """A chirp plus noise, 7.3 s: not periodic, full band."""
    t = np.arange(int(7.3 * 16000)) / 16000
    chirp = np.sin(2 * np.pi * (100 * t + 400 * t**2))
    return (0.3 * chirp + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


class TestStreamingEqualsOffline:
    """Windows from any push sizes, then flush(), are slices of logmel(whole signal)."""

    @pytest.mark.parametrize("sizes", [[1, 17, 509], [256], [2560], [100_000], [255, 257]])
    def test_block_sizes(self, music, sizes):
        y = music if sizes != [1, 17, 509] else music[: 3 * 16000 + 123]
        offline = logmel(y)
        windows = stream(LogMelFramer(WINDOW, HOP), y, sizes)
        assert len(windows) == expected_windows(len(y), WINDOW, HOP)
        for w in windows:
            assert np.array_equal(w.frames, offline[w.start_frame : w.start_frame + WINDOW])

    def test_random_block_sizes(self, music, rng):
        sizes = list(rng.integers(1, 3000, size=200))
        offline = logmel(music)
        windows = stream(LogMelFramer(WINDOW, HOP), music, sizes)
        assert [w.index for w in windows] == list(range(len(windows)))
        assert [w.start_frame for w in windows] == [i * HOP for i in range(len(windows))]
        for w in windows:
            assert np.array_equal(w.frames, offline[w.start_frame : w.start_frame + WINDOW])

    def test_flush_emits_the_right_padded_frame(self):
        """The last frame exists only after flush(): librosa's right-hand centre padding."""
        n = (WINDOW - 1) * HOP_LENGTH  # exactly 187 frames once padded on the right
        y = np.ones(n, dtype=np.float32) * 0.1
        framer = LogMelFramer(WINDOW, HOP)
        assert list(framer.push(y)) == []
        (window,) = framer.flush()
        np.testing.assert_array_equal(window.frames, logmel(y))

    @pytest.mark.parametrize("n", [0, 100, 3 * 16000 - 1000])
    def test_shorter_than_a_window_gives_nothing(self, n, rng):
        y = rng.standard_normal(n).astype(np.float32)
        assert stream(LogMelFramer(WINDOW, HOP), y, [333]) == []

    @pytest.mark.parametrize(("window", "hop"), [(187, 187), (31, 100), (10, 1)])
    def test_other_window_and_hop(self, music, window, hop):
        offline = logmel(music)
        windows = stream(LogMelFramer(window, hop), music, [777])
        assert len(windows) == expected_windows(len(music), window, hop)
        for w in windows:
            assert np.array_equal(w.frames, offline[w.start_frame : w.start_frame + window])

    def test_reset_starts_a_new_stream(self, music):
        """After a reset the windows hold only audio pushed since, as a fresh framer's do, while
        window numbers and stream time carry on (a gap does not send the feed's clock back)."""
        framer = LogMelFramer(WINDOW, HOP)
        before = list(framer.push(music[:20000]))
        frames_before = framer.frames_done
        framer.reset()
        again = stream(framer, music, [4096])
        fresh = stream(LogMelFramer(WINDOW, HOP), music, [4096])
        assert len(again) == len(fresh)
        assert all(np.array_equal(a.frames, b.frames) for a, b in zip(again, fresh, strict=True))
        assert [w.index for w in again] == [len(before) + w.index for w in fresh]
        assert [w.start_frame for w in again] == [frames_before + w.start_frame for w in fresh]
        assert again[0].t_start_s == frames_before * HOP_LENGTH / 16000

    @pytest.mark.parametrize("phase", [1, 31, HOP - 1])
    def test_a_phase_delays_the_grid(self, music, phase):
        """With a phase the windows are those of phase 0 shifted by it, again after a reset,
        and still slices of the offline log-mel."""
        offline = logmel(music)
        windows = stream(LogMelFramer(WINDOW, HOP, phase_frames=phase), music, [3001])
        assert [w.start_frame for w in windows] == [
            phase + i * HOP for i in range(expected_windows(len(music) - phase * HOP_LENGTH,
                                                            WINDOW, HOP))]
        for w in windows:
            assert np.array_equal(w.frames, offline[w.start_frame : w.start_frame + WINDOW])
        framer = LogMelFramer(WINDOW, HOP, phase_frames=phase)
        list(framer.push(music[:10000]))
        framer.reset()
        origin = framer.frames_done
        assert next(iter(stream(framer, music, [4096]))).start_frame == origin + phase


class TestWindowFields:
    """Times, copies, arrival stamps and levels."""

    def test_times_and_own_copies(self, music):
        windows = stream(LogMelFramer(WINDOW, HOP), music, [4000])
        w0, w1 = windows[:2]
        assert (w1.t_start_s, w1.t_end_s) == (HOP * 0.016, (HOP + WINDOW) * 0.016)
        before = w1.frames.copy()
        w0.frames[:] = 0
        assert np.array_equal(w1.frames, before)
        assert w0.frames.shape == (WINDOW, 96) and w0.frames.dtype == np.float32

    def test_arrival_is_that_of_the_completing_push(self, music):
        windows = stream(LogMelFramer(WINDOW, HOP), music, [1000])
        for w in windows:
            last_sample = (w.start_frame + WINDOW) * HOP_LENGTH  # completes with this push
            assert last_sample <= w.arrival < last_sample + 1000 + HOP_LENGTH

    def test_digital_silence_is_minus_inf(self):
        windows = stream(LogMelFramer(WINDOW, HOP), np.zeros(5 * 16000, np.float32), [1600])
        assert windows and all(w.level_dbfs == -math.inf for w in windows)
        assert all(np.all(w.frames == 0) for w in windows)

    def test_level_of_a_sine(self):
        t = np.arange(5 * 16000) / 16000
        y = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        windows = stream(LogMelFramer(WINDOW, HOP), y, [1600])
        expected = 10 * math.log10(0.5**2 / 2)  # mean square of a sine of amplitude 0.5
        assert all(abs(w.level_dbfs - expected) < 0.05 for w in windows[:-1])

    def test_invalid_sizes(self):
        with pytest.raises(ValueError, match="window and hop"):
            LogMelFramer(0, 62)
        for phase in (-1, 62):
            with pytest.raises(ValueError, match="phase must be 0..hop-1"):
                LogMelFramer(187, 62, phase_frames=phase)


class TestFileHelper:
    """logmel_windows_for_file gives musicnn's exact input for the bundled clip, read, resampled
    and framed a block at a time, whatever the block size and however the file is decoded."""

    def test_load_equals_librosa_load(self):
        ours = load_mono_16k(CLIP_PATH)
        ref, _ = librosa.load(CLIP_PATH, sr=16000)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, ref)

    def test_patches_of_the_clip(self):
        windows = logmel_windows_for_file(CLIP_PATH, window_frames=187, hop_frames=187)
        assert len(windows) == 1876 // 187 == 10
        full = logmel(load_mono_16k(CLIP_PATH))
        for w in windows:
            assert np.array_equal(w.frames, full[w.start_frame : w.start_frame + 187])
            assert -40 < w.level_dbfs < 0

    @pytest.mark.parametrize("block_frames", [37, 1000, 44100, 10**7])
    def test_block_size_changes_nothing(self, block_frames, tmp_path):
        """A 44.1 kHz stereo file in blocks of any size: soxr's tail is cut or padded to
        librosa's length at the end, so the last window is the offline one too."""
        clip = CLIP_PATH if block_frames > 37 else _first_seconds(CLIP_PATH, 4.0, tmp_path)
        full = logmel(load_mono_16k(clip))
        windows = list(stream_file_windows(clip, window_frames=187, hop_frames=62,
                                           block_frames=block_frames))
        assert len(windows) == expected_windows(len(load_mono_16k(clip)), 187, 62) > 0
        for w in windows:
            assert np.array_equal(w.frames, full[w.start_frame : w.start_frame + 187])

    def test_file_soundfile_cannot_open(self, tmp_path):
        """An M4A goes through ffmpeg whole, then through the same blocks."""
        m4a = tmp_path / "clip.m4a"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(CLIP_PATH), "-t", "7",
                        "-c:a", "aac", str(m4a)], check=True, timeout=60)
        full = logmel(load_mono_16k(m4a))
        windows = list(stream_file_windows(m4a, hop_frames=62, block_frames=3000))
        assert len(windows) == expected_windows(len(load_mono_16k(m4a)), 187, 62) > 0
        for w in windows:
            assert np.array_equal(w.frames, full[w.start_frame : w.start_frame + 187])


def _first_seconds(path: Path, seconds: float, folder: Path) -> Path:
    """The first seconds of a file as a WAV of its own rate and channels."""
    audio, rate = sf.read(path, dtype="float32", frames=int(seconds * sf.info(path).samplerate))
    out = folder / "head.wav"
    sf.write(out, audio, rate, subtype="FLOAT")
    return out


class TestSamplesToNextWindow:
    """`samples_to_next_window()` is exact: one sample fewer completes no window, that many do."""

    @settings(max_examples=40, deadline=None)
    @given(st.sampled_from([1, 31, 62, 93, 187]), st.lists(st.integers(0, 3000), max_size=30),
           st.floats(0.0, 0.999))
    def test_exact(self, hop_frames, pushes, phase_share):
        rng = np.random.default_rng(hop_frames)
        framer = LogMelFramer(WINDOW_FRAMES, hop_frames,
                              phase_frames=int(phase_share * hop_frames))
        for n in pushes:  # anywhere in a stream, not only at the start
            list(framer.push(rng.standard_normal(n).astype(np.float32)))
        for _ in range(3):
            need = framer.samples_to_next_window()
            assert need >= 1
            assert list(framer.push(rng.standard_normal(need - 1).astype(np.float32))) == []
            assert len(list(framer.push(rng.standard_normal(1).astype(np.float32)))) == 1
