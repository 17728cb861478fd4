"""Source faults through the real daemon: ffmpeg killed, a stream unreachable at start, a file
that ends (clean stop, or loop). Each runs ``streamclf serve`` as a child process."""

from __future__ import annotations

import itertools
import os
import signal
import time

import soundfile as sf
from reliability_helpers import CLIP, EXIT_PROMISE_S, PacedWavServer, children_named

from streamclf.feed.schema import GenreMessage
from streamclf.streams import STALL_S
from streamclf.testing.daemon import START_TIMEOUT_S, Daemon, wait_for, write_config
from streamclf.testing.feed import FeedRecorder


def source_states(daemon: Daemon) -> list[str]:
    return [e["state"] for e in daemon.events() if e.get("event") == "source_state"]


class TestFfmpegDies:
    """Killing the ffmpeg reader makes the stream 'lost'; it is restarted with back-off and the
    windows carry on, in the same process, with no seq gap."""

    def test_kill_ffmpeg_twice(self, tmp_path):
        server = PacedWavServer()
        server.start()
        cfg = write_config(tmp_path, streams=[{"id": "net", "source": "url", "url": server.url}])
        try:
            with FeedRecorder(cfg.endpoint) as feed, Daemon(cfg) as daemon:
                assert feed.wait(lambda: feed.genre_count("net") >= 2, timeout_s=START_TIMEOUT_S)
                for _kill in range(2):
                    readers = children_named(daemon.pid, "ffmpeg")
                    assert len(readers) == 1
                    os.kill(readers[0], signal.SIGKILL)
                    assert wait_for(lambda old=readers: children_named(daemon.pid, "ffmpeg")
                                    not in ([], old), timeout_s=30)  # fmt: skip
                    published = feed.genre_count("net")
                    assert feed.wait(lambda: feed.genre_count("net") >= published + 2,  # noqa: B023
                                     timeout_s=30)  # fmt: skip
                rc, took_s = daemon.terminate()
                states = source_states(daemon)
        finally:
            server.stop()
        assert rc == 0 and took_s < EXIT_PROMISE_S
        assert states.count("lost") == 2 and states[-1] == "running", states
        assert server.connections >= 3
        assert feed.seq_gaps() == {} and feed.lost == 0
        assert feed.final_status("net").dropped_windows == 0


class TestStuckReader:
    """A source reader that blocks (its ffmpeg frozen with SIGSTOP: the pipe stays open, nothing
    comes) marks the stream `stalled: source` in its status and withholds the watchdog, since the
    daemon's only stream cannot work; once it moves again, both come back."""

    def test_frozen_ffmpeg_withholds_the_watchdog(self, tmp_path):
        server = PacedWavServer()
        server.start()
        cfg = write_config(tmp_path, streams=[{"id": "net", "source": "url", "url": server.url}],
                           service={"watchdog": True})
        env = {"WATCHDOG_USEC": "1000000"}
        try:
            with FeedRecorder(cfg.endpoint) as feed, Daemon(cfg, env=env) as daemon:
                notify = daemon.notify
                assert feed.wait(lambda: feed.genre_count("net") >= 2, timeout_s=START_TIMEOUT_S)
                assert feed.last_status("net").stalled is None
                (reader,) = children_named(daemon.pid, "ffmpeg")
                os.kill(reader, signal.SIGSTOP)
                assert feed.wait(lambda: feed.last_status("net").stalled == "source",
                                 timeout_s=STALL_S + 10)  # fmt: skip
                time.sleep(0.5)  # a ping already on its way lands first
                pings = notify.lines().count("WATCHDOG=1")
                time.sleep(2.0)  # four ping periods (WATCHDOG_USEC / 2)
                assert notify.lines().count("WATCHDOG=1") == pings, "pinged while stuck"
                assert any(line.startswith("STATUS=net: stalled (source)")
                           for line in notify.lines())
                os.kill(reader, signal.SIGCONT)
                assert feed.wait(lambda: feed.last_status("net").stalled is None, timeout_s=10)
                assert wait_for(lambda: notify.lines().count("WATCHDOG=1") > pings, timeout_s=5)
                # the audio that queued up while it was frozen is worked off before the stop
                resumed = feed.genre_count("net")
                assert feed.wait(lambda: feed.genre_count("net") >= resumed + 3 and all(
                    m.latency_ms < 1000 for m in feed.of(GenreMessage, "net")[-2:]),
                    timeout_s=60)  # fmt: skip
                rc, _ = daemon.terminate()
                events = daemon.events()
        finally:
            server.stop()
        assert rc == 0
        transitions = [(e["event"], e.get("stalled", e.get("was"))) for e in events
                       if e.get("event") in ("pipeline_stalled", "pipeline_recovered")]
        assert transitions == [("pipeline_stalled", "net: source"),
                               ("pipeline_recovered", "net: source")]

    def test_one_stuck_stream_of_two_keeps_the_watchdog(self, tmp_path):
        """The daemon still works for the other stream: the stuck one shows in its status and
        in STATUS=, but the watchdog goes on (a restart would interrupt the working stream)."""
        server = PacedWavServer()
        server.start()
        cfg = write_config(tmp_path, streams=[
            {"id": "net", "source": "url", "url": server.url},
            {"id": "clip", "source": "file", "path": CLIP, "loop": True, "realtime": True},
        ], service={"watchdog": True})  # fmt: skip
        env = {"WATCHDOG_USEC": "1000000"}
        try:
            with FeedRecorder(cfg.endpoint) as feed, Daemon(cfg, env=env) as daemon:
                notify = daemon.notify
                assert feed.wait(lambda: min(feed.genre_count("net"), feed.genre_count("clip"))
                                 >= 2, timeout_s=START_TIMEOUT_S)  # fmt: skip
                (reader,) = children_named(daemon.pid, "ffmpeg")
                os.kill(reader, signal.SIGSTOP)
                assert feed.wait(lambda: feed.last_status("net").stalled == "source",
                                 timeout_s=STALL_S + 10)  # fmt: skip
                pings = notify.lines().count("WATCHDOG=1")
                clip_windows = feed.genre_count("clip")
                time.sleep(2.0)  # four ping periods
                assert notify.lines().count("WATCHDOG=1") >= pings + 2
                assert feed.genre_count("clip") > clip_windows
                assert feed.last_status("clip").stalled is None
                assert any("net: stalled (source)" in line for line in notify.lines())
                os.kill(reader, signal.SIGCONT)
                assert feed.wait(lambda: feed.last_status("net").stalled is None, timeout_s=10)
                resumed = feed.genre_count("net")
                assert feed.wait(lambda: feed.genre_count("net") >= resumed + 3 and all(
                    m.latency_ms < 1000 for m in feed.of(GenreMessage, "net")[-2:]),
                    timeout_s=60)  # fmt: skip
                rc, _ = daemon.terminate()
                events = daemon.event_names()
        finally:
            server.stop()
        assert rc == 0
        assert "pipeline_stalled" not in events


class TestUnreachableStream:
    """A network stream that is down at start is retried with back-off until it comes up."""

    def test_comes_up_later(self, tmp_path):
        server = PacedWavServer()  # not started yet: connection refused
        cfg = write_config(tmp_path, streams=[{"id": "net", "source": "url", "url": server.url}])
        try:
            with FeedRecorder(cfg.endpoint) as feed, Daemon(cfg) as daemon:
                assert feed.wait(lambda: feed.last_status("net") is not None,
                                 timeout_s=START_TIMEOUT_S)  # fmt: skip
                assert wait_for(lambda: source_states(daemon).count("lost") >= 1, timeout_s=30)
                assert wait_for(lambda: feed.last_status("net").device_state == "lost",
                                timeout_s=10)  # fmt: skip
                assert feed.genre_count("net") == 0
                server.start()
                assert feed.wait(lambda: feed.genre_count("net") >= 2, timeout_s=60)
                assert feed.wait(lambda: feed.last_status("net").device_state == "running",
                                 timeout_s=10)  # fmt: skip
                rc, _ = daemon.terminate()
                events = daemon.event_names()
        finally:
            server.stop()
        assert rc == 0
        assert "ffmpeg_probe_failed" in events
        assert feed.seq_gaps() == {}


def _short_wav(folder, seconds: float):
    audio, rate = sf.read(CLIP, dtype="float32", frames=int(seconds * 44100))
    path = folder / "short.wav"
    sf.write(path, audio, rate)
    return path


class TestFileEnds:
    def test_without_loop_the_daemon_stops_cleanly(self, tmp_path):
        """At the end of a file the daemon flushes, sends a final status and exits 0 by itself."""
        path = _short_wav(tmp_path, 8.0)
        cfg = write_config(tmp_path, streams=[{"id": "f", "source": "file", "path": str(path)}])
        with Daemon(cfg) as daemon:
            # subscribe once the feed is bound: a SUB that keeps knocking on a missing ipc path
            # backs off to 5 s between tries, longer than the rest of this run
            assert wait_for(lambda: "feed_bound" in daemon.event_names(),
                            timeout_s=START_TIMEOUT_S)  # fmt: skip
            with FeedRecorder(cfg.endpoint) as feed:
                assert daemon.wait(START_TIMEOUT_S) == 0
            names = daemon.event_names()
        assert "all_inputs_ended" in names
        final = feed.final_status("f")
        assert final is not None and final.device_state == "ended"
        genre = feed.of(GenreMessage, "f")
        # 8 s at a 1 s hop: windows ending at 3, 4, ... 8 s plus the flushed tail
        assert genre and genre[-1].t1 >= 7.9
        # every window was published (seq counts from 0; the first may predate the subscriber)
        assert final.windows == genre[-1].seq + 1 and final.dropped_windows == 0
        assert feed.seq_gaps() == {}

    def test_with_loop_it_keeps_going(self, tmp_path):
        """A looped 3.5 s file keeps producing windows past twice its length."""
        path = _short_wav(tmp_path, 3.5)
        cfg = write_config(tmp_path, streams=[{"id": "f", "source": "file", "path": str(path),
                                               "loop": True}], framing={"hop_s": 0.5})  # fmt: skip
        with FeedRecorder(cfg.endpoint) as feed, Daemon(cfg) as daemon:
            assert feed.wait(lambda: feed.genre_count("f") >= 1, timeout_s=START_TIMEOUT_S)
            assert feed.wait(lambda: feed.of(GenreMessage, "f")[-1].t1 > 8.0, timeout_s=30)
            assert daemon.proc.poll() is None
            rc, _ = daemon.terminate()
        genre = feed.of(GenreMessage, "f")
        assert rc == 0 and genre[-1].t1 > 8.0
        assert all(0.4 < b.t1 - a.t1 < 0.6 for a, b in itertools.pairwise(genre))
        assert feed.last_status("f").device_state == "running"
        assert feed.seq_gaps() == {}
