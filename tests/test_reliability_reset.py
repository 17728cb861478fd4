"""One reset protocol, on the real sources (docs/architecture.md): when a source restarts after
a loss, every stage of its stream starts afresh, in order, and the first window after the gap
holds only audio from after it, while stream time carries on.

ffmpeg is killed under a live HTTP stream (a paced local server that starts each connection at
the clip's first sample), and a PulseAudio null sink is unloaded and loaded again under a
device source; the windows the engine was given are recorded and compared.
"""

from __future__ import annotations

import itertools
import math
import os
import signal

import numpy as np
from audio_helpers import pulse_server_fixture
from paced_wav_server import PacedWavServer
from pipeline_helpers import recorded_pipeline
from reliability_helpers import children_named

from streamclf.testing.daemon import START_TIMEOUT_S, wait_for, write_config

pulse = pulse_server_fixture()
HOP_S = 0.5
STREAM = "s"


class WindowRecorder:
    """The real runner, recording in order the windows it runs and the resets it is asked for."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.events: list[object] = []  # a Window, or "reset" for a reset of the stream

    def run(self, items):
        self.events.extend(window for stream_id, window in items if stream_id == STREAM)
        return self._runner.run(items)

    def reset(self, stream_id: str | None = None) -> None:
        if stream_id == STREAM:  # not the start-up self-test's own stream
            self.events.append("reset")
        self._runner.reset(stream_id)

    def __getattr__(self, name: str):
        return getattr(self._runner, name)

    def around_reset(self) -> tuple[list, list]:
        """The windows before the first reset, and those after it."""
        at = self.events.index("reset")
        return self.events[:at], self.events[at + 1 :]

    def windows_after_reset(self) -> int:
        return len(self.events) - self.events.index("reset") - 1 if "reset" in self.events else 0


def recorded_stream(tmp_path, stream: dict):
    """A Pipeline (no feed socket) over one stream: a context yielding (pipeline, recorder)."""
    cfg = write_config(tmp_path, streams=[{"id": STREAM, **stream}], framing={"hop_s": HOP_S})
    return recorded_pipeline(cfg.path, WindowRecorder)


def assert_fresh_after_gap(before: list, after: list) -> None:
    """Stream time and window numbers go on past the last window before the gap."""
    last = before[-1]
    assert after[0].start_frame >= last.start_frame + last.frames.shape[0]
    assert after[0].t_start_s >= last.t_end_s
    assert after[0].index > last.index
    assert all(b.start_frame > a.start_frame for a, b in itertools.pairwise(after))


class TestFfmpegKilled:
    def test_first_window_after_the_restart_is_the_new_audio_alone(self, tmp_path):
        server = PacedWavServer()
        server.start()
        try:
            with recorded_stream(tmp_path, {"source": "url", "url": server.url}) as (
                    pipeline, recorder):
                assert wait_for(lambda: len(recorder.events) >= 2, timeout_s=START_TIMEOUT_S)
                (reader,) = children_named(os.getpid(), "ffmpeg")
                os.kill(reader, signal.SIGKILL)
                assert wait_for(lambda: recorder.windows_after_reset() >= 2, timeout_s=60)
                stream = pipeline.streams[0]
                assert stream.source.restarts == 1 and stream.gaps == 1
        finally:
            server.stop()
        before, after = recorder.around_reset()
        assert "reset" not in after
        # The new connection starts at the clip's first sample: with the resampler and framer
        # started afresh, the first window after the gap is the stream's first window again,
        # to the bit; a window that still held audio from before the kill would differ.
        np.testing.assert_array_equal(after[0].frames, before[0].frames)
        assert after[0].level_dbfs == before[0].level_dbfs
        assert_fresh_after_gap(before, after)


class TestDeviceReopened:
    def test_first_window_after_the_reopen_holds_no_audio_from_before(self, pulse, tmp_path):
        """Music plays into the null sink until it is unloaded; nothing plays once it is loaded
        again, so the re-opened monitor gives digital silence. A window after the gap that kept
        any frame from before it would have a level above -inf."""
        player = None
        try:
            with recorded_stream(tmp_path, {"source": "device", "device": "pulse"}) as (
                    pipeline, recorder):
                player = pulse.play()
                assert wait_for(lambda: sum(not isinstance(e, str) and e.level_dbfs > -60
                                            for e in recorder.events) >= 2,
                                timeout_s=START_TIMEOUT_S)  # fmt: skip
                pulse.unload_sink()
                source = pipeline.streams[0].source
                assert wait_for(lambda: source.state == "lost", timeout_s=30)
                pulse.load_sink()
                assert wait_for(lambda: recorder.windows_after_reset() >= 1, timeout_s=60)
        finally:
            if player is not None and player.poll() is None:
                player.terminate()
            if not pulse.null_sink_modules():
                pulse.load_sink()
        before, after = recorder.around_reset()
        assert before[-1].level_dbfs > -60  # music up to the gap
        assert after[0].level_dbfs == -math.inf
        assert not after[0].frames.any()
        assert_fresh_after_gap(before, after)

