"""Ctrl-C: one rule for every command (docs/cli.md). A real SIGINT to the real program exits 130,
during start-up as while running; SIGTERM stays a clean stop with 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

from e2e_helpers import CLIP, REPO, run_in_pty, streamclf_cmd

from streamclf.testing.daemon import (
    START_TIMEOUT_S,
    Daemon,
    NotifySocket,
    wait_for,
    write_config,
)

EXIT_INTERRUPTED = 130


class OutputWatcher:
    """Collects a child's stdout or stderr lines on a thread, so the test can wait for one."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.decode(errors="replace"))

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)


def _interrupt_when(args: list[str], *, stdout_has: str = "", stderr_has: str = "",
                    notify: NotifySocket | None = None) -> int:
    """Start `streamclf ARGS`, wait until its stdout or stderr shows the given text (or, with
    `notify`, until it reports 'loading engine' there), send SIGINT, return the exit code."""
    env = {**os.environ, **({"NOTIFY_SOCKET": notify.path} if notify else {})}
    proc = subprocess.Popen(streamclf_cmd(*args), stdin=subprocess.DEVNULL, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        out, err = OutputWatcher(proc.stdout), OutputWatcher(proc.stderr)
        def ready() -> bool:
            if notify is not None:
                return "STATUS=loading engine" in notify.lines()
            return out.saw(stdout_has) if stdout_has else err.saw(stderr_has)

        assert wait_for(ready, timeout_s=START_TIMEOUT_S), err.lines
        proc.send_signal(signal.SIGINT)
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _serve_config(tmp_path):
    return write_config(tmp_path, streams=[{"id": "a", "source": "file", "path": str(CLIP),
                                            "loop": True}])


def test_serve_sigint_and_sigterm_while_running(tmp_path):
    """Running: SIGINT exits 130, SIGTERM 0 (what systemd sends), both after a clean stop."""
    cfg = _serve_config(tmp_path)
    for signum, expected in ((signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, 0)):
        with Daemon(cfg) as daemon:
            assert wait_for(lambda d=daemon: "pipeline_started" in d.event_names(),
                            timeout_s=START_TIMEOUT_S)
            rc, _ = daemon.terminate(signum=signum)
            assert rc == expected, signum
            assert "pipeline_stopped" in daemon.event_names()


def test_listen_sigint_while_running():
    """`listen` after its first window: 130, like `subscribe`."""
    rc = _interrupt_when(["listen", "--demo", "--no-publish", "--json"], stdout_has='"genre"')
    assert rc == EXIT_INTERRUPTED


def test_listen_sigint_during_startup(tmp_path):
    """`listen` while its engine loads: 130 too, and no READY was ever sent."""
    with NotifySocket(tmp_path / "notify") as notify:
        rc = _interrupt_when(["listen", "--demo", "--no-publish", "--json"], notify=notify)
    assert rc == EXIT_INTERRUPTED
    assert "READY=1" not in notify.lines()


def test_subscribe_and_classify_sigint(tmp_path):
    """`subscribe` on a live feed and `classify` in the middle of its files: 130."""
    cfg = write_config(tmp_path, streams=[{"id": "a", "source": "file", "path": str(CLIP),
                                           "loop": True}])
    with Daemon(cfg):
        rc = _interrupt_when(["subscribe", "--endpoint", cfg.endpoint, "--json"],
                             stdout_has='"topic"')
    assert rc == EXIT_INTERRUPTED
    rc = _interrupt_when(["-v", "classify", *[str(CLIP)] * 50], stderr_has="runner_selected")
    assert rc == EXIT_INTERRUPTED


def test_live_view_after_ctrl_c():
    """Ctrl-C in the live view on a terminal: 130, and the last frame says the stream stopped
    rather than leaving it 'running'."""
    interrupted_at = None

    def interrupt_once_drawn(proc: subprocess.Popen, screen: bytes) -> None:
        nonlocal interrupted_at
        if interrupted_at is None and b"rock" in screen:
            proc.send_signal(signal.SIGINT)
            interrupted_at = len(screen)

    proc, screen = run_in_pty(["listen", "--demo", "--no-publish"], timeout_s=START_TIMEOUT_S,
                              on_screen=interrupt_once_drawn)
    try:
        assert interrupted_at is not None, screen.decode(errors="replace")
        assert proc.wait(15) == EXIT_INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    after = screen[interrupted_at:].decode(errors="replace")
    last_frame = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", after)  # the text without its colours
    assert "main · stopped" in last_frame
    assert "Traceback" not in last_frame
