"""The daemon harness itself (`streamclf.testing.daemon`): the configs it writes are what the
daemon reads, and a daemon that cannot start is reported with its own error, not a hang."""

from __future__ import annotations

import tomllib

import pytest
from e2e_helpers import CLIP

from streamclf.config import load_config
from streamclf.errors import StreamclfError
from streamclf.testing.daemon import Daemon, config_toml, write_config


class TestConfig:
    """Sections, arrays of tables and every value kind come out as TOML that means the same."""

    def test_config_toml_round_trips(self) -> None:
        sections = {
            "engine": {"kind": "onnxruntime", "threads": 1, "genres": ["rock", "jazz"]},
            "feed": {"endpoint": 'ipc:///tmp/a "quoted" path', "status_interval_s": 0.5},
            "service": {"watchdog": False},
            "streams": [{"id": "a", "loop": True}, {"id": "b", "loop": False}],
        }
        assert tomllib.loads(config_toml(sections)) == sections

    def test_written_config_is_what_the_daemon_reads(self, tmp_path) -> None:
        cfg = write_config(tmp_path, framing={"hop_s": 0.5}, service={"watchdog": True},
                           streams=[{"id": "a", "source": "file", "path": CLIP, "loop": True}])
        config = load_config(cfg.path)
        assert config.feed.endpoint == cfg.endpoint and cfg.endpoint.startswith("ipc://")
        assert (config.engine.kind, config.engine.threads) == ("onnxruntime", 1)
        assert config.framing.hop_s == 0.5 and config.service.watchdog is True
        assert config.service.log_format == "json"
        [stream] = config.streams
        assert (stream.id, stream.path, stream.loop) == ("a", str(CLIP), True)


def test_a_daemon_that_exits_at_start_is_reported_with_its_error(tmp_path) -> None:
    cfg = write_config(tmp_path, streams=[{"id": "a", "source": "file",
                                           "path": tmp_path / "missing.ogg"}])
    with Daemon(cfg) as daemon, pytest.raises(StreamclfError) as raised:
        daemon.wait_ready()
    assert "exit status 3" in str(raised.value) and "missing.ogg" in str(raised.value)
    assert daemon.proc.returncode == 3
    assert "READY=1" not in daemon.notify.lines()
