"""SIGTERM at awkward moments: during engine warm-up and under overload (device loss: in
test_reliability_device.py). Each must end the daemon cleanly within 2 s; once the feed is up,
a final status message goes out first."""

from __future__ import annotations

import signal
import time

import pytest
from reliability_helpers import CLIP, EXIT_PROMISE_S

from streamclf.testing.daemon import START_TIMEOUT_S, Daemon, wait_for, write_config
from streamclf.testing.feed import FeedRecorder


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_sigterm_during_engine_warmup(tmp_path, request, signum, exit_code):
    """The signal lands while the engine loads: out within 2 s, 'stopped_during_startup'; exit 0
    for SIGTERM, 130 for Ctrl-C (docs/cli.md)."""
    cfg = write_config(tmp_path, streams=[{"id": "a", "source": "file", "path": str(CLIP)}])
    with Daemon(cfg) as daemon:
        notify = daemon.notify
        assert wait_for(lambda: "STATUS=loading engine" in notify.lines(),
                        timeout_s=START_TIMEOUT_S)  # fmt: skip
        rc, took_s = daemon.terminate(signum=signum)
        names = daemon.event_names()
        time.sleep(0.1)  # a datagram sent just before the exit is collected
        datagrams = list(notify.datagrams)
    request.node.user_properties.append(("exit_s", round(took_s, 3)))  # docs/reliability.md
    assert rc == exit_code and took_s < EXIT_PROMISE_S, (rc, took_s)
    assert "stopped_during_startup" in names and "pipeline_started" not in names
    assert not any(m.startswith("READY=1") for m in datagrams)
    # start-up asked systemd for more time before it began loading (docs/engines.md)
    assert datagrams[0] == "EXTEND_TIMEOUT_USEC=30000000"


def test_sigterm_under_overload(tmp_path, request):
    """An unpaced looped file at a 0.1 s hop gives the engine far more windows than it can
    take; SIGTERM still ends it in 2 s, and the final status counts the dropped windows."""
    cfg = write_config(tmp_path, streams=[{"id": "a", "source": "file", "path": str(CLIP),
                                           "loop": True, "realtime": False}],
                       framing={"hop_s": 0.1})  # fmt: skip
    with FeedRecorder(cfg.endpoint) as feed, Daemon(cfg) as daemon:
        assert feed.wait(lambda: getattr(feed.last_status("a"), "dropped_windows", 0) > 50,
                         timeout_s=START_TIMEOUT_S)  # fmt: skip
        rc, took_s = daemon.terminate()
    request.node.user_properties.append(("exit_s", round(took_s, 3)))  # docs/reliability.md
    assert rc == 0 and took_s < EXIT_PROMISE_S, took_s
    final = feed.final_status("a")
    assert final is not None and final.dropped_windows > 50
    assert feed.seq_gaps() == {}
