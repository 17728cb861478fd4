"""`streamclf listen`: plain lines in a pipe, JSON lines, and the live view in a pseudo-terminal."""

from __future__ import annotations

import json
import subprocess
import time

from e2e_helpers import (
    assert_one_line_error,
    free_tcp_endpoint,
    run_cli,
    run_in_pty,
    streamclf_cmd,
)

from streamclf.feed.subscriber import Subscriber


class TestListenPlain:
    """Not on a terminal: one plain line per window, or JSON lines; the feed is published too."""

    def test_plain_lines(self):
        proc = run_cli("listen", "--demo", "--no-publish", "--duration", "6", timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
        lines = proc.stdout.decode().splitlines()
        genre_lines = [ln for ln in lines if " rock " in ln and "dBFS" in ln]
        assert len(genre_lines) >= 2, lines
        assert any("status" in ln and "final" in ln for ln in lines)

    def test_json_lines_and_feed(self):
        endpoint = free_tcp_endpoint()
        with Subscriber(endpoint, ("genre.",)) as sub:
            proc = subprocess.Popen(
                streamclf_cmd("listen", "--demo", "--json", "--duration", "7", "--hop", "0.5",
                              "--endpoint", endpoint, "--engine", "onnxruntime"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            received = []
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                msg = sub.recv(0.2)
                if msg is not None:
                    received.append(msg)
            out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err.decode()
        records = [json.loads(line) for line in out.decode().splitlines()]
        genres = [r for r in records if r["topic"] == "genre.main"]
        assert len(genres) >= 4
        # 0.5 s hop = 31 frames of 256 samples at 16 kHz
        assert genres[1]["t0"] - genres[0]["t0"] == 31 * 256 / 16000
        assert [r["seq"] for r in genres] == list(range(len(genres)))
        assert received and {m.seq for m in received} <= {r["seq"] for r in genres}

    def test_missing_file(self, tmp_path):
        proc = run_cli("listen", "--file", str(tmp_path / "none.wav"), "--no-publish")
        assert_one_line_error(proc, 3)

    def test_unknown_device(self):
        proc = run_cli("listen", "--device", "no such card", "--no-publish")
        assert_one_line_error(proc, 3)


class TestListenTerminal:
    """On a terminal, the rich live view draws the genre, tags and counters in place."""

    def test_live_view_in_a_pty(self):
        proc, screen = run_in_pty(["listen", "--demo", "--no-publish", "--duration", "6"],
                                  timeout_s=40)
        assert proc.wait(10) == 0
        text = screen.decode(errors="replace")
        assert "\x1b[" in text  # drawn with terminal control sequences, not plain lines
        assert "rock" in text and "main" in text and "dBFS" in text
        assert "Traceback" not in text


def test_config_genre_vocabulary(tmp_path):
    """`[engine] genres` in the config narrows what the daemon publishes as the genre."""
    config = tmp_path / "g.toml"
    config.write_text('[engine]\nmodel = "MSD_musicnn"\ngenres = ["jazz", "metal", "pop"]\n'
                      '[smoothing]\nunknown_threshold = 0.0\n')
    proc = run_cli("listen", "--config", str(config), "--demo", "--no-publish", "--json",
                   "--duration", "5", timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    genres = {r["genre"] for r in records if r["topic"] == "genre.main"}
    assert genres and genres <= {"jazz", "metal", "pop"}
    statuses = [r for r in records if r["topic"] == "status.main"]
    assert statuses[-1]["genres"] == ["jazz", "metal", "pop"]
