"""`streamclf serve` as systemd runs it: a subprocess, a real feed, a real notify socket."""

from __future__ import annotations

import itertools
import json
import signal
import time

import pytest
from audio_helpers import wait_for
from e2e_helpers import CLIP, assert_one_line_error, free_tcp_endpoint, run_cli

from streamclf.content import LABELS as CONTENT_LABELS
from streamclf.feed.schema import ChangeMessage, GenreMessage, StatusMessage
from streamclf.feed.subscriber import Subscriber
from streamclf.models.card import load_model_card
from streamclf.testing.daemon import Daemon, write_config


def _write_config(folder, endpoint, tau=5.0, hop=1.0):
    """The daemon's config: one looped real-time file stream, the default engine threads, the
    watchdog on."""
    return write_config(folder, engine={"threads": 0}, service={"watchdog": True},
                        feed={"endpoint": endpoint, "status_interval_s": 1.0},
                        framing={"hop_s": hop}, smoothing={"time_constant_s": tau},
                        streams=[{"id": "main", "source": "file", "path": CLIP, "loop": True,
                                  "realtime": True}])


def _collect(sub, messages, seconds, *, genres=None):
    """Receive for `seconds`, or until `genres` genre messages arrived (generous under load)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        msg = sub.recv(0.2)
        if msg is not None:
            messages.append(msg)
        if genres is not None and sum(isinstance(m, GenreMessage) for m in messages) >= genres:
            return


def _gap_free(messages, kind):
    seqs = [m.seq for m in messages if isinstance(m, kind)]
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False


@pytest.fixture
def daemon(tmp_path):
    cfg = _write_config(tmp_path, free_tcp_endpoint())
    sub = Subscriber(cfg.endpoint)
    with Daemon(cfg, env={"WATCHDOG_USEC": "2000000"}) as daemon:
        yield daemon, sub, tmp_path
    sub.close()


class TestServe:
    """READY, watchdog, gap-free schema-valid messages, reload without a gap, clean SIGTERM."""

    def test_lifecycle(self, daemon):
        daemon, sub, folder = daemon
        notify, endpoint = daemon.notify, daemon.endpoint
        daemon.wait_ready(timeout_s=30)
        messages: list = []
        _collect(sub, messages, 40.0, genres=4)
        genres = [m for m in messages if isinstance(m, GenreMessage)]
        assert len(genres) >= 4
        assert _gap_free(messages, GenreMessage) and _gap_free(messages, StatusMessage)
        assert genres[0].stream == "main" and genres[0].engine == "onnxruntime"
        assert {g.genre for g in genres} <= {"rock", "unknown"} and genres[-1].genre == "rock"
        assert all(0 < g.confidence <= 1 for g in genres)
        assert all(g.content in CONTENT_LABELS and g.raw_content in CONTENT_LABELS
                   and [label for label, _ in g.content_probs] == list(CONTENT_LABELS)
                   for g in genres)
        assert all(0 <= g.latency_ms < 5000 for g in genres)
        assert [m.genre for m in messages if isinstance(m, ChangeMessage)][:1] in ([], ["rock"])
        statuses = [m for m in messages if isinstance(m, StatusMessage)]
        assert statuses and statuses[-1].device_state == "running" and not statuses[-1].final
        assert statuses[-1].labels == list(load_model_card().labels)  # the default model's
        lines = notify.lines()
        assert lines.count("WATCHDOG=1") >= 3
        assert any(line.startswith("STATUS=main: rock") for line in lines)

        # `streamclf subscribe` sees the same feed.
        sub_proc = run_cli("subscribe", "--endpoint", endpoint, "--topic", "genre.",
                           "--count", "2", "--json", "--timeout", "10", timeout=30)
        assert sub_proc.returncode == 0, sub_proc.stderr.decode()
        records = [json.loads(line) for line in sub_proc.stdout.decode().splitlines()]
        assert len(records) == 2 and all(r["topic"] == "genre.main" for r in records)

        # SIGHUP: new smoothing applied, the new hop named as needing a restart, the feed keeps
        # going without a gap at the old hop.
        _write_config(folder, endpoint, tau=1.0, hop=0.5)
        daemon.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "RELOADING=1" in notify.lines(), timeout_s=5)
        _collect(sub, messages, 3.0)
        assert _gap_free(messages, GenreMessage)
        assert notify.lines().count("READY=1") == 2

        # SIGTERM: out within 2 s, with a final status on the feed.
        rc, took_s = daemon.terminate(5)
        assert rc == 0 and took_s < 2.0
        _collect(sub, messages, 1.0)
        assert any(isinstance(m, StatusMessage) and m.final for m in messages)
        assert "STOPPING=1" in notify.lines()
        logs = daemon.events()
        events = [r["event"] for r in logs]
        assert "runner_selected" in events and "config_reloaded" in events
        assert events.index("engine_self_test_passed") < events.index("pipeline_started")
        reloaded = next(r for r in logs if r["event"] == "config_reloaded")
        assert reloaded["applied"] == ["smoothing.time_constant_s"]
        assert reloaded["needs_restart"] == ["framing.hop_s"]
        assert "reload_needs_restart" in events
        starts = [m.t0 for m in messages if isinstance(m, GenreMessage)]  # the hop stayed 1 s
        assert all(b - a == pytest.approx(1.0, abs=0.01) for a, b in itertools.pairwise(starts))
        assert "pipeline_stopped" in events


class TestServeBadInput:
    """A bad config or a missing model stops the daemon at start with one line and its code."""

    def test_bad_config(self, tmp_path):
        config = tmp_path / "bad.toml"
        config.write_text('[framing]\nhop_s = "fast"\n')
        line = assert_one_line_error(run_cli("serve", "--config", str(config)), 2)
        assert "framing.hop_s" in line

    def test_missing_config(self, tmp_path):
        assert_one_line_error(run_cli("serve", "--config", str(tmp_path / "none.toml")), 2)

    def test_missing_file_source(self, tmp_path):
        cfg = write_config(tmp_path, streams=[{"id": "main", "source": "file",
                                               "path": tmp_path / "x.ogg"}])
        assert_one_line_error(run_cli("serve", "--config", str(cfg.path)), 3)
