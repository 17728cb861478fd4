"""File, stdin and ffmpeg sources deliver the right audio, and every bad input ends in a
one-line AudioInputError or a counted state, never a traceback or a hang."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_helpers import CLIP_PATH, wait_for

from streamclf.audio.base import Backoff
from streamclf.audio.files import FileSource
from streamclf.audio.pcm import FfmpegSource, StdinSource
from streamclf.audio.ring import RingBuffer
from streamclf.errors import AudioInputError
from streamclf.features.framer import logmel_windows_for_file

pytestmark = pytest.mark.timeout(60)


def collect(source, *, ring_s: float = 2.0, seconds_cap: float = 30.0) -> np.ndarray:
    """Run a source into a ring, draining it, until its state is final; all frames read."""
    source.open()
    ring = RingBuffer(int(source.sample_rate * ring_s), source.channels)
    out = np.empty((4096, source.channels), dtype=np.float32)
    chunks = []
    source.start(ring)
    deadline = time.monotonic() + seconds_cap
    try:
        while time.monotonic() < deadline:
            final = source.state in ("ended", "failed")
            n, _ = ring.read(out)
            if n:
                chunks.append(out[:n].copy())
            elif final:
                break
            else:
                time.sleep(0.002)
    finally:
        source.stop()
    assert ring.overrun_samples == 0
    return np.concatenate(chunks) if chunks else np.zeros((0, source.channels), np.float32)


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, int]:
    return sf.read(CLIP_PATH, dtype="float32", always_2d=True)


@pytest.fixture
def short_wav(tmp_path, clip) -> Path:
    audio, rate = clip
    path = tmp_path / "short.wav"
    sf.write(path, audio[: rate // 2], rate, subtype="FLOAT")
    return path


class TestFileSource:
    """soundfile reading, as fast as the reader drains or paced in real time, looped."""

    def test_fast_delivers_the_whole_file(self, clip):
        audio, rate = clip
        source = FileSource(CLIP_PATH, realtime=False, blocksize=3000)
        got = collect(source)
        assert source.state == "ended"
        assert (source.sample_rate, source.channels) == (rate, 2)
        np.testing.assert_array_equal(got, audio)

    def test_realtime_is_not_faster_than_real_time(self, short_wav):
        started = time.monotonic()
        got = collect(FileSource(short_wav, realtime=True, blocksize=512))
        assert len(got) == 22050
        assert time.monotonic() - started >= 0.4

    def test_loop_keeps_going(self, short_wav):
        source = FileSource(short_wav, realtime=False, loop=True)
        source.open()
        ring = RingBuffer(44100, 2)
        out = np.empty((4096, 2), np.float32)
        source.start(ring)
        try:
            assert wait_for(lambda: (ring.read(out), ring.consumed)[1] > 3 * 22050, timeout_s=20)
        finally:
            source.stop()
        assert source.state == "running"

    def test_missing_file(self, tmp_path):
        with pytest.raises(AudioInputError, match="not found"):
            FileSource(tmp_path / "nope.ogg").open()

    def test_corrupt_file(self, tmp_path):
        bad = tmp_path / "bad.wav"
        bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
        with pytest.raises(AudioInputError, match="cannot read audio file") as info:
            FileSource(bad).open()
        assert "\n" not in str(info.value)
        with pytest.raises(AudioInputError, match="cannot read audio file"):
            logmel_windows_for_file(bad)

    def test_truncated_file_ends_cleanly(self, tmp_path):
        cut = tmp_path / "cut.ogg"
        cut.write_bytes(CLIP_PATH.read_bytes()[:200_000])
        source = FileSource(cut, realtime=False)
        got = collect(source)
        assert source.state == "ended"
        assert 0 < len(got) < 30 * 44100

    def test_nan_and_inf_replaced_and_counted(self, tmp_path):
        audio = np.full((8000, 1), 0.25, dtype=np.float32)
        audio[100:110] = np.nan
        audio[5000] = np.inf
        path = tmp_path / "nan.wav"
        sf.write(path, audio, 16000, subtype="FLOAT")
        source = FileSource(path, realtime=False)
        got = collect(source)
        assert np.isfinite(got).all()
        assert source.nonfinite_samples == 11
        assert np.count_nonzero(got == 0) == 11

    def test_all_zero_file_is_silence(self, tmp_path):
        path = tmp_path / "zeros.wav"
        sf.write(path, np.zeros((16000 * 7, 2), np.float32), 16000)
        windows = logmel_windows_for_file(path, window_frames=187, hop_frames=62)
        assert windows and all(w.level_dbfs == -np.inf for w in windows)


class TestStdinSource:
    """Raw PCM from a pipe; EOF (early or not) ends the source."""

    @pytest.mark.parametrize(
        ("fmt", "dtype", "scale"), [("s16le", "<i2", 32768), ("f32le", "<f4", 1)]
    )
    def test_pcm_formats(self, rng, fmt, dtype, scale):
        values = rng.uniform(-0.9, 0.9, size=(30000, 2))
        pcm = (values * scale).astype(dtype)
        read_fd, write_fd = os.pipe()
        writer = threading.Thread(target=_write_in_pieces, args=(write_fd, pcm.tobytes()))
        writer.start()
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            source = StdinSource(sample_rate=22050, channels=2, fmt=fmt, stream=pipe)
            got = collect(source)
        writer.join()
        assert source.state == "ended"
        np.testing.assert_array_equal(got, pcm.astype(np.float32) / scale)

    def test_closed_early_mid_frame(self):
        read_fd, write_fd = os.pipe()
        os.write(write_fd, np.arange(7, dtype="<i2").tobytes())  # 3.5 stereo frames
        os.close(write_fd)
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            source = StdinSource(sample_rate=8000, channels=2, stream=pipe)
            got = collect(source)
        assert source.state == "ended"
        assert got.shape == (3, 2)

    def test_bad_format(self):
        with pytest.raises(AudioInputError, match="PCM format"):
            StdinSource(sample_rate=8000, channels=1, fmt="mulaw")


def _write_in_pieces(fd: int, data: bytes) -> None:
    for i in range(0, len(data), 1001):  # odd sizes split frames across reads
        os.write(fd, data[i : i + 1001])
    os.close(fd)


class TestFfmpegSource:
    """ffmpeg decodes to f32le at the native rate; it is restarted with back-off when it ends."""

    def test_decodes_the_clip(self, clip):
        audio, rate = clip
        source = FfmpegSource(str(CLIP_PATH), restart=False)
        got = collect(source, ring_s=40)  # ffmpeg is not paced: room for all of it
        assert source.state == "ended"
        assert (source.sample_rate, source.channels) == (rate, 2)
        assert abs(len(got) - len(audio)) < rate // 10
        n = min(len(got), len(audio))
        corr = np.corrcoef(got[:n, 0], audio[:n, 0])[0, 1]
        assert corr > 0.99

    def test_restarts_when_ffmpeg_ends(self, short_wav):
        source = FfmpegSource(str(short_wav), backoff=Backoff(0.05, 0.2))
        source.open()
        ring = RingBuffer(44100 * 2, 2)
        out = np.empty((8192, 2), np.float32)
        source.start(ring)
        try:
            assert wait_for(lambda: (ring.read(out), source.restarts)[1] >= 2, timeout_s=30)
        finally:
            source.stop()
        assert ring.written >= 2 * 22050

    def test_missing_ffmpeg(self):
        with pytest.raises(AudioInputError, match="ffmpeg not found"):
            FfmpegSource("x.ogg", ffmpeg="no-such-ffmpeg-binary").open()

    def test_unreadable_url_at_open(self, tmp_path):
        with pytest.raises(AudioInputError, match="ffmpeg cannot read"):
            FfmpegSource(str(tmp_path / "nothing.ogg")).open()

    def test_unreachable_stream_is_lost_and_retried(self, tmp_path):
        source = FfmpegSource(str(tmp_path / "gone.ogg"), sample_rate=44100, channels=2,
                              backoff=Backoff(0.05, 0.1))  # fmt: skip
        source.open()
        source.start(RingBuffer(4096, 2))
        try:
            assert wait_for(lambda: source.restarts >= 2, timeout_s=30)
            assert source.state == "lost"
        finally:
            source.stop()

    def test_no_audio_without_restart_fails_in_one_line(self, tmp_path):
        source = FfmpegSource(str(tmp_path / "gone.ogg"), sample_rate=44100, channels=2,
                              restart=False)  # fmt: skip
        collect(source)
        assert source.state == "failed"
        assert "no audio" in str(source.error) and "\n" not in str(source.error)
