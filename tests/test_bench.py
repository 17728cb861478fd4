"""`streamclf bench --quick --json` end to end: the report's structure and the sanity of its
numbers (speed targets live in the benchmark itself, not here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from streamclf.bench.framer import framer_flops_per_audio_s
from streamclf.bench.report import BEGIN_MARK, END_MARK, SECTIONS, write_report

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One real quick run as a subprocess: its JSON report and the markdown it wrote."""
    doc = tmp_path_factory.mktemp("bench") / "benchmarks.md"
    out = subprocess.run(
        [sys.executable, "-m", "streamclf.cli", "bench", "--quick", "--json", "--write", str(doc)],
        capture_output=True, text=True, timeout=360, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout), doc.read_text()


def _positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


class TestReport:
    """Every section is present, every target check is a well-formed verdict."""

    def test_sections_and_checks(self, bench: tuple[dict, str]) -> None:
        report, _ = bench
        assert report["quick"] is True
        for section in SECTIONS:
            assert section.name in report, section.name
        assert {"framer_x_realtime", "e2e_p99_vs_runner_p99", "capacity_vs_runner_bound",
                "rss_bytes", "ready_s", "torch_libraries_mapped"} <= set(report["checks"])
        for name, check in report["checks"].items():
            assert isinstance(check["ok"], bool), name
            assert check["value"] is not None, name

    def test_markdown_has_every_section_and_the_targets(self, bench: tuple[dict, str]) -> None:
        report, doc = bench
        assert "`streamclf bench --quick`" in doc
        for i, section in enumerate(SECTIONS, 1):
            assert f"## {i}. {section.title}" in doc
        assert "## Targets (CPU engine)" in doc
        assert doc.startswith(f"# Benchmarks\n\n{BEGIN_MARK}\n")
        assert doc.count("| met |") + doc.count("| **missed** |") == len(report["checks"])


class TestFramer:
    """The streaming framer does O(hop) work per window; the naive way does O(window)."""

    def test_rates_are_positive_and_consistent(self, bench: tuple[dict, str]) -> None:
        framer = bench[0]["framer"]
        rows = framer["rows"]
        for name, row in rows.items():
            assert _positive(row["x_realtime"]), name
            assert row["x_realtime"] == pytest.approx(framer["audio_s"] / row["seconds"])
        # A quarter of the hop: about four times the windows of the 1 s hop.
        assert (rows["framer_hop_0.25s_block_50ms"]["windows"]
                >= 3 * rows["framer_hop_1s_block_50ms"]["windows"])
        assert (rows["framer_hop_1s_block_1000ms"]["windows"]
                == rows["framer_hop_1s_block_50ms"]["windows"])
        assert framer["floor"]["flops_per_audio_s"] == pytest.approx(framer_flops_per_audio_s())

    def test_librosa_comparisons_ran(self, bench: tuple[dict, str]) -> None:
        """librosa is a dev dependency, installed for the tests: no skip note."""
        framer = bench[0]["framer"]
        assert framer["librosa_note"] is None
        assert {"librosa_whole_file", "librosa_naive_hop_1s"} <= set(framer["speedup_vs"])
        # Recomputing 3 s at every hop cannot beat the framer's new frames only, even under load.
        assert framer["speedup_vs"]["librosa_naive_hop_0.25s"] > 1.0


class TestEngines:
    def test_onnxruntime_row(self, bench: tuple[dict, str]) -> None:
        engines = bench[0]["engines"]
        row = next(r for r in engines["engines"] if r["engine"] == "onnxruntime")
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"]
        assert all(_positive(v) for v in row["windows_per_s"].values())
        assert _positive(engines["flops_per_window"])
        assert _positive(engines["floor_ms_per_window"])
        assert "reference" not in engines  # no figure without a source in the project


class TestDaemon:
    """The real daemon ran: windows reached a subscriber, it said READY, it holds no torch."""

    def test_end_to_end_latency(self, bench: tuple[dict, str]) -> None:
        e2e = bench[0]["end_to_end"]
        assert e2e["windows"] >= 30
        ms = e2e["e2e_ms"]
        assert 0 < ms["p50"] <= ms["p99"] <= ms["max"]
        # The subscriber's part comes on top of the daemon's own arrival → publish latency.
        assert ms["p50"] >= e2e["in_daemon_ms"]["p50"]
        # judged against the runner the daemon ran, measured alone in the same run
        alone = e2e["runner_alone_ms"]
        assert alone["runner"] == e2e["runner"] == "incremental"
        assert alone["windows"] == 30 and 0 < alone["p50"] <= alone["p99"]
        assert bench[0]["checks"]["e2e_p99_vs_runner_p99"]["value"] == pytest.approx(
            ms["p99"] / alone["p99"])

    def test_capacity_trials(self, bench: tuple[dict, str]) -> None:
        capacity = bench[0]["capacity"]
        assert len(capacity["trials"]) == 1
        for trial in capacity["trials"]:
            # measured after the start-up burst has had its time; the start's p99 is shown
            assert trial["settle_s"] == capacity["settle_s"] > 0
            assert trial["start_p99_ms"] > 0
            assert trial["expected_windows"] >= 1
            assert trial["cpu_percent"] > 0
            assert trial["cpu_percent_per_stream"] == pytest.approx(
                trial["cpu_percent"] / trial["streams"])
            # the daemon names its threads in /proc: each kind of work is seen, and together
            # they are the process's CPU (to /proc's 10 ms ticks)
            threads = trial["cpu_percent_by_thread"]
            assert threads["engine worker (runner, smoother, feed)"] > 0
            assert threads["stream workers (ring → resample → framer, levels)"] > 0
            assert threads["source readers"] > 0
            assert sum(threads.values()) == pytest.approx(trial["cpu_percent"],
                                                          rel=0.1, abs=2.0)
            assert _positive(trial["engine_cpu_ms_per_window"])
        sustained = [t["streams"] for t in capacity["trials"] if t["sustained"]]
        assert capacity["streams"] == max(sustained, default=0)
        # the same search with the on-air stages off: the feed shows neither content nor loudness
        genre_only = capacity["genre_only"]
        assert len(genre_only["trials"]) == 1
        assert all(t["onair_published"] for t in capacity["trials"])
        assert not any(t["onair_published"] for t in genre_only["trials"])
        assert genre_only["streams"] == max(
            (t["streams"] for t in genre_only["trials"] if t["sustained"]), default=0)
        # judged against the bound of the runner the daemon ran (the default, incremental one),
        # measured alone before, between and after the two searches: each search against the
        # mean of the two measurements around it
        assert capacity["runner"] == "incremental" == bench[0]["end_to_end"]["runner"]
        before, between, after = capacity["bounds"]
        for bound in capacity["bounds"]:
            assert bound["runner"] == "incremental"
            assert _positive(bound["streams"]) and _positive(bound["cpu_ms_per_window"])
            assert bound["streams"] == pytest.approx(1e3 / bound["ms_per_window"])
        assert capacity["runner_bound_streams"] == capacity["bound_streams"] == pytest.approx(
            (before["streams"] + between["streams"]) / 2)
        assert genre_only["bound_streams"] == pytest.approx(
            (between["streams"] + after["streams"]) / 2)
        assert bench[1].count("ONNX Runtime's pool used") == 2
        check = bench[0]["checks"]["capacity_vs_runner_bound"]
        assert check["value"] == pytest.approx(capacity["streams"] / capacity["bound_streams"])

    def test_memory_and_startup(self, bench: tuple[dict, str]) -> None:
        daemon = bench[0]["daemon"]
        assert daemon["torch_mapped"] == []
        assert daemon["rss_bytes"] > daemon["floor"]["ort_session_rss_bytes"] / 2
        assert daemon["peak_rss_bytes"] >= daemon["rss_bytes"]
        assert daemon["ready_s"] > daemon["floor"]["python_start_s"] > 0
        capacity = bench[0]["capacity"]
        assert daemon["ready_s_all_starts"]["n"] == (
            1 + len(capacity["trials"]) + len(capacity["genre_only"]["trials"]))


def test_missing_daemon_fails_with_one_line(tmp_path: Path) -> None:
    """A daemon that cannot start is a StreamclfError naming the reason, not a hang."""
    from streamclf.bench.common import Context
    from streamclf.bench.daemon_sections import served
    from streamclf.errors import StreamclfError

    ctx = Context(quick=True, workdir=tmp_path, audio=tmp_path / "missing.wav")
    with (pytest.raises(StreamclfError, match=r"1 streams\): the daemon did not become ready"),
          served(ctx, streams=1, hop_s=1.0)):
        pass


class TestWriteReport:
    """--write replaces only the generated part, so the hand-written reading of it survives."""

    def test_new_file_gets_a_title_and_the_markers(self, tmp_path: Path) -> None:
        path = tmp_path / "docs" / "benchmarks.md"
        write_report(path, "table 1\n")
        assert path.read_text() == f"# Benchmarks\n\n{BEGIN_MARK}\ntable 1\n{END_MARK}\n"

    def test_rewrite_keeps_the_text_around_the_markers(self, tmp_path: Path) -> None:
        path = tmp_path / "benchmarks.md"
        path.write_text(f"# Title\nintro\n{BEGIN_MARK}\nold\n{END_MARK}\n## Reading\nnotes\n")
        write_report(path, "new\n")
        assert path.read_text() == (f"# Title\nintro\n{BEGIN_MARK}\nnew\n{END_MARK}\n"
                                    "## Reading\nnotes\n")

    def test_onair_stage_cost(self, bench: tuple[dict, str]) -> None:
        """The loudness stage's CPU per stream is measured and set beside a whole stream's."""
        onair = bench[0]["onair"]
        assert 0 < onair["loudness_cpu_percent"] < 100
        assert 0 < onair["content_cpu_percent"] < 100
        assert onair["stream_cpu_percent"] > 0 and onair["share_of_stream"] > 0
        assert "onair_share_of_stream" in bench[0]["checks"]
