"""Device loss through the real daemon: the PulseAudio null sink it captures from is unloaded
mid-stream, then loaded again. The daemon must report 'lost', retry with back-off and resume in
the same process with a gap-free feed; SIGTERM while lost must still exit cleanly in 2 s."""

from __future__ import annotations

import pytest
from audio_helpers import pulse_server_fixture
from reliability_helpers import EXIT_PROMISE_S

from streamclf.testing.daemon import START_TIMEOUT_S, Daemon, wait_for, write_config
from streamclf.testing.feed import FeedRecorder

pulse = pulse_server_fixture()


@pytest.fixture
def sink_restored(pulse):
    """The module's PulseAudio server, with its sink back in place after the test."""
    yield pulse
    if not pulse.null_sink_modules():
        pulse.load_sink()


def _device_config(tmp_path):
    return write_config(tmp_path, streams=[{"id": "dev", "source": "device", "device": "pulse"}])


def _state(feed: FeedRecorder) -> str | None:
    status = feed.last_status("dev")
    return status.device_state if status else None


class TestDeviceLoss:
    def test_lost_then_resumes_in_the_same_process(self, sink_restored, tmp_path, request):
        pulse = sink_restored
        cfg = _device_config(tmp_path)
        pulse.play()
        with FeedRecorder(cfg.endpoint) as feed, Daemon(cfg, env=pulse.env) as daemon:
            assert feed.wait(lambda: feed.genre_count("dev") >= 2, timeout_s=START_TIMEOUT_S)
            pulse.unload_sink()
            assert feed.wait(lambda: _state(feed) == "lost", timeout_s=30)
            published = feed.genre_count("dev")
            pulse.load_sink()
            pulse.play()
            assert feed.wait(lambda: _state(feed) == "running", timeout_s=60)
            assert feed.wait(lambda: feed.genre_count("dev") >= published + 2, timeout_s=30)
            assert daemon.proc.poll() is None  # never restarted
            rc, took_s = daemon.terminate()
            states = [e["state"] for e in daemon.events() if e.get("event") == "source_state"]
        request.node.user_properties.append(("exit_s", round(took_s, 3)))  # docs/reliability.md
        assert rc == 0 and took_s < EXIT_PROMISE_S
        assert "lost" in states and states[-1] == "running", states
        assert feed.seq_gaps() == {} and feed.lost == 0
        assert feed.final_status("dev").device_state == "running"

    def test_sigterm_while_lost_exits_in_time_with_a_final_status(self, sink_restored, tmp_path,
                                                                  request):
        pulse = sink_restored
        cfg = _device_config(tmp_path)
        pulse.play()
        with FeedRecorder(cfg.endpoint) as feed, Daemon(cfg, env=pulse.env) as daemon:
            assert feed.wait(lambda: feed.genre_count("dev") >= 1, timeout_s=START_TIMEOUT_S)
            pulse.unload_sink()
            assert feed.wait(lambda: _state(feed) == "lost", timeout_s=30)
            wait_for(lambda: False, timeout_s=1.0)  # let it be inside a retry
            rc, took_s = daemon.terminate()
        request.node.user_properties.append(("exit_s", round(took_s, 3)))  # docs/reliability.md
        assert rc == 0 and took_s < EXIT_PROMISE_S, took_s
        final = feed.final_status("dev")
        assert final is not None and final.device_state == "lost"
