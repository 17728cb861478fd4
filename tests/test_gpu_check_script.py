"""scripts/gpu-check.sh on this machine (no GPU): its help, and one-line refusals."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu-check.sh"


def run(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PATH": path} if path is not None else {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=30, env=env, check=False)


def test_help_says_what_it_assumes() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    assert "Assumes: an NVIDIA driver" in proc.stdout and "--wheels DIR" in proc.stdout
    assert proc.stdout.rstrip().endswith("Usage: scripts/gpu-check.sh [--wheels DIR] [--out FILE]")


def test_refusals_are_one_line(tmp_path: Path) -> None:
    no_gpu = run(path=f"{tmp_path}:/usr/bin:/bin")  # a PATH without nvidia-smi
    assert no_gpu.returncode == 1
    assert no_gpu.stderr == "gpu-check: nvidia-smi not found: this is not a GPU machine\n"
    unknown = run("--bogus")
    assert (unknown.returncode, unknown.stderr) == (
        2, "gpu-check: unknown argument '--bogus' (see --help)\n")
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho 'Some GPU, 9.0, 580.00, 1 MiB'\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    missing = run("--wheels", str(tmp_path / "absent"), path=f"{tmp_path}:/usr/bin:/bin")
    assert missing.returncode == 2
    assert missing.stderr == f"gpu-check: --wheels: no folder '{tmp_path / 'absent'}'\n"
