"""Real capture: the bundled clip played into a PulseAudio null sink, captured by DeviceSource
through PortAudio's ``pulse`` device; and device loss and recovery without a new process."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from audio_helpers import CLIP_PATH, best_alignment, pulse_server_fixture, wait_for

from streamclf.audio.devices import DeviceSource, list_input_devices
from streamclf.audio.resample import Resampler
from streamclf.audio.ring import RingBuffer
from streamclf.errors import AudioInputError
from streamclf.features.framer import LogMelFramer

pulse = pulse_server_fixture()

CAPTURE_S = 8.0


def _drain(ring: RingBuffer, chunks: list[np.ndarray]) -> None:
    out = np.empty((ring.capacity, ring.channels), dtype=np.float32)
    n, _ = ring.read(out)
    if n:
        chunks.append(out[:n].copy())


class TestDeviceCapture:
    """The captured waveform is the played file, and the framer makes windows from it."""

    def test_pulse_device_is_listed(self, pulse):
        names = [d.name for d in list_input_devices()]
        assert "pulse" in names

    def test_captured_audio_matches_clip_per_segment(self, pulse):
        source = DeviceSource("pulse", channels=2)
        source.open()
        ring = RingBuffer(int(source.sample_rate * 20), source.channels)
        source.start(ring)
        chunks: list[np.ndarray] = []
        try:
            assert wait_for(lambda: source.state == "running", timeout_s=15)
            _drain(ring, chunks)
            chunks.clear()  # silence before playback
            pulse.play(CLIP_PATH)
            assert wait_for(
                lambda: (
                    (_drain(ring, chunks), sum(len(c) for c in chunks))[1]
                    >= CAPTURE_S * source.sample_rate
                ),
                timeout_s=CAPTURE_S + 20,
                interval_s=0.2,
            )
        finally:
            source.stop()
        captured = np.concatenate(chunks).mean(axis=1)
        clip, clip_rate = sf.read(CLIP_PATH, dtype="float32", always_2d=True)
        assert clip_rate == source.sample_rate, "null sink runs at the clip's 44.1 kHz"
        reference = clip.mean(axis=1)[: int((CAPTURE_S + 4) * clip_rate)]
        audible = np.flatnonzero(np.abs(captured) > 1e-3)
        assert audible.size, "nothing was captured from the sink monitor"
        sec = source.sample_rate
        first = audible[0] + sec // 2  # the monitor can join late: align after the start
        correlations = [
            best_alignment(captured[s : s + sec], reference)[1]
            for s in range(first, len(captured) - sec, sec)
        ]
        assert len(correlations) >= 4
        assert min(correlations) > 0.9, correlations

        resampler = Resampler(source.sample_rate, 2)
        framer = LogMelFramer(187, 62)
        y = np.concatenate([resampler.push(c) for c in chunks] + [resampler.flush()])
        windows = [*framer.push(y), *framer.flush()]
        n_frames = 1 + len(y) // 256
        assert len(windows) == (n_frames - 187) // 62 + 1
        assert np.isfinite(windows[-1].level_dbfs)


class TestDeviceLoss:
    """Unloading the sink makes the source 'lost'; loading it again resumes it in-process."""

    def test_lost_then_running_again(self, pulse):
        source = DeviceSource("pulse", channels=2, stall_s=2.0)
        source.open()
        ring = RingBuffer(int(source.sample_rate * 5), source.channels)
        source.start(ring)
        try:
            assert wait_for(lambda: source.state == "running", timeout_s=15)
            pulse.unload_sink()
            assert wait_for(lambda: source.state == "lost", timeout_s=15)
            assert source.restarts == 0
            pulse.load_sink()
            assert wait_for(lambda: source.state == "running", timeout_s=30)
            assert source.restarts >= 1
            before = ring.written
            assert wait_for(lambda: ring.written > before + source.sample_rate, timeout_s=15)
        finally:
            source.stop()
        assert source.state in ("running", "starting")


class TestDeviceErrors:
    """Bad device choices are one-line AudioInputErrors, never tracebacks or hangs."""

    def test_unknown_device_name(self, pulse):
        with pytest.raises(AudioInputError, match="no input device matches"):
            DeviceSource("no-such-device-xyz").open()

    def test_device_index_out_of_range(self, pulse):
        with pytest.raises(AudioInputError, match="no input device with index"):
            DeviceSource(9999).open()

    def test_too_many_channels(self, pulse):
        with pytest.raises(AudioInputError, match="input channels"):
            DeviceSource("pulse", channels=64).open()

    def test_unsupported_stream_is_an_input_error(self, pulse):
        source = DeviceSource("pulse", channels=2, sample_rate=1)
        source.open()
        with pytest.raises(AudioInputError, match="cannot open input device"):
            source.start(RingBuffer(1024, 2))
