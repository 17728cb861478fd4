"""Running the real `streamclf` commands as subprocesses, and what they talk to."""

from __future__ import annotations

import csv
import os
import pty
import select
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

# the tests import these three from here
from streamclf.testing.daemon import NotifySocket, free_tcp_port, streamclf_cmd  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "streamclf" / "data" / "clip.ogg"
GENRES = REPO / "datasets" / "genres"


def genre_sample(dest: Path, *, per_split: int = 3, families: int = 8) -> Path:
    """A folder whose manifest.csv lists the first `per_split` clips of each split for the
    `families` largest families of datasets/genres (absolute paths; ties by name), so that the
    training tests' time stays put as the set grows in tracks and in families.
    """
    with open(GENRES / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    sizes = Counter(row["label"] for row in rows)
    largest = sorted(sizes, key=lambda label: (-sizes[label], label))[:families]
    taken: Counter = Counter()
    keep = []
    for row in rows:
        if row["label"] not in largest:
            continue
        taken[row["label"], row["split"]] += 1
        if taken[row["label"], row["split"]] <= per_split:
            keep.append({**row, "path": str(GENRES / row["path"])})
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)
    return dest


def run_in_pty(args: list[str], *, timeout_s: float,
               on_screen: Callable[[subprocess.Popen, bytes], None] | None = None,
               ) -> tuple[subprocess.Popen, bytes]:
    """Run the CLI on a pseudo-terminal, so that rich draws its live view, and collect what it
    draws until it ends or `timeout_s` passes; `on_screen(proc, screen)` sees the screen so far
    after each read (to send a signal at the right moment). The caller waits for the process."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    proc = subprocess.Popen(streamclf_cmd(*args), stdin=terminal, stdout=terminal,
                            stderr=terminal, env=env, cwd=REPO)
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if on_screen is not None:
                on_screen(proc, screen)
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the terminal closed: the program has ended
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(controller)
    return proc, screen


def run_cli(*args: str, timeout: float = 120, env: dict | None = None,
            input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(streamclf_cmd(*args), capture_output=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})}, input=input_bytes, cwd=REPO)


def free_tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    """A user error: the documented exit code and one line on stderr, no traceback."""
    return one_line_error(proc.returncode, proc.stderr.decode(), code)


def one_line_error(returncode: int, err: str, code: int) -> str:
    """The one `streamclf: error:` line of a run that exited `code` (asserted), no traceback."""
    assert returncode == code, (returncode, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("streamclf: error:")]
    assert len(lines) == 1, err
    return lines[0]
