"""Soak: real-time streaming (a looped file plus a PulseAudio device) with RSS, seq and drops
checked. Two minutes in the normal run; the 30-minute one with ``pytest --soak``
(docs/reliability.md has its numbers, from ``python tools/soak.py --minutes 30``)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from audio_helpers import pulse_server_fixture
from reliability_helpers import EXIT_PROMISE_S, REPO

pulse = pulse_server_fixture()

RSS_GROWTH_LIMIT_MIB = 5.0


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", REPO / "tools" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _check(result, request) -> None:
    request.node.user_properties.extend([  # docs/reliability.md
        ("rss_warmup_mib", round(result.rss_warmup_mib, 2)),
        ("rss_growth_mib", round(result.rss_growth_mib, 2)), ("exit_s", round(result.exit_s, 3)),
        *((f"{name}_windows_published_dropped_missing", (s.windows_published, s.dropped_windows,
                                                        s.windows_missing_by_t1))
          for name, s in result.streams.items()),
    ])  # fmt: skip
    assert result.exit_code == 0 and result.exit_s < EXIT_PROMISE_S
    assert result.final_status_seen
    assert result.seq_gaps == {} and result.subscriber_lost == 0
    assert result.unexplained_drops() == {}
    for name, stream in result.streams.items():
        assert stream.device_state == "running", name
        # one window per hop; generous, since the first ones may predate the subscriber
        assert stream.windows_published >= 0.8 * result.duration_s / 0.992, name
    assert result.rss_growth_mib <= RSS_GROWTH_LIMIT_MIB, result.samples


class TestSoak:
    """Both streams run in real time with no seq gaps, no uncounted drops, flat memory."""

    @pytest.mark.timeout(400)
    def test_two_minutes(self, pulse, tmp_path, request):
        _check(_soak_module().run_soak(duration_s=120, warmup_s=30, sample_s=5, pulse=pulse,
                                       workdir=tmp_path), request)

    @pytest.mark.soak
    @pytest.mark.timeout(2400)
    def test_thirty_minutes(self, pulse, tmp_path, request):
        _check(_soak_module().run_soak(duration_s=1800, warmup_s=120, sample_s=10, pulse=pulse,
                                       workdir=tmp_path), request)
