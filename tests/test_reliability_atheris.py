"""Coverage-guided fuzzing (tools/fuzz.py, atheris): every target runs clean for a few seconds,
and the harness does report a failure when there is one.

Short runs, a smoke test of the harness and a regression net; the long runs and what they found
are in docs/reliability.md. atheris has wheels for Linux x86_64 and CPython < 3.13 only (the dev
extra installs it there); elsewhere these tests skip.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (wheels: Linux x86_64, "
                                      "CPython < 3.13; pip install -e .[dev])")  # fmt: skip

FUZZ = Path(__file__).resolve().parents[1] / "tools" / "fuzz.py"
RUN_S = 6  # libFuzzer's -max_total_time per target; start-up adds ~2 s


def fuzz(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """tools/fuzz.py in ``tmp_path`` (crash files land there, the default corpus under it);
    ``stdout`` holds both streams (libFuzzer writes to stderr, atheris the traceback to stdout)."""
    # Linux carries a process's peak RSS over fork and exec, and libFuzzer checks that peak:
    # under a pytest that has grown to GBs (the training tests) its default 2 GB limit fired on
    # the first input. So the limit is 2 GB above what this process has already reached.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    limits = ["-timeout=10", f"-rss_limit_mb={peak_mb + 2048}"]
    return subprocess.run([sys.executable, str(FUZZ), *args, *limits], check=False, cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=RUN_S + 60)  # fmt: skip


class TestTargets:
    """Each target, from its seeds, for a few seconds: libFuzzer finishes, no crash input."""

    @pytest.mark.parametrize("target", ["config", "pcm", "feed"])
    def test_runs_clean(self, tmp_path, target):
        result = fuzz(tmp_path, target, "-runs=1000000", f"-max_total_time={RUN_S}")
        assert result.returncode == 0, result.stdout[-3000:]
        assert "\tDONE " in result.stdout
        assert not list(tmp_path.glob("crash-*"))


def test_strict_errors_turns_a_rejected_message_into_a_crash(tmp_path):
    """With --strict-errors a MessageError is a crash: libFuzzer stops at the first rejected
    input, exits non-zero and writes it as crash-<sha1>, the way a real bug would be reported;
    replaying that file fails the same way, and passes without the flag."""
    result = fuzz(tmp_path, "feed", "--strict-errors", "-runs=1000")
    assert result.returncode != 0
    assert "MessageError: expected 2 frames" in result.stdout
    (crash,) = tmp_path.glob("crash-*")
    replay = fuzz(tmp_path, "feed", "--strict-errors", str(crash))
    assert replay.returncode != 0 and "MessageError: expected 2 frames" in replay.stdout
    assert fuzz(tmp_path, "feed", str(crash)).returncode == 0
