"""The `listen` sinks: live view, plain lines and JSON lines, fed real feed messages."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import textwrap
import time

import pytest
from rich.console import Console

from streamclf.feed.schema import ChangeMessage, GenreMessage, StatusMessage
from streamclf.feed.subscriber import format_message
from streamclf.monitor import JsonLines, LiveView, PlainLines, clock, level_fraction, make_view

WALL = 1_700_000_000.0


GENRE_FIELDS = {
    "v": 1, "stream": "main", "seq": 12, "t0": 9.0, "t1": 12.0, "wall": WALL, "latency_ms": 45.2,
    "genre": "rock", "confidence": 0.71, "raw_genre": "pop",
    "top": [["rock", 0.71], ["pop", 0.40], ["guitar", 0.33]], "level_dbfs": -18.3,
    "silence": False, "model": "MSD_musicnn", "engine": "onnxruntime",
}
CHANGE_FIELDS = {
    "v": 1, "stream": "main", "seq": 13, "wall": WALL + 1, "t1": 13.0, "genre": "rock",
    "previous": "pop", "confidence": 0.66,
}
STATUS_FIELDS = {
    "v": 1, "stream": "main", "seq": 14, "wall": WALL + 2, "uptime_s": 30.4,
    "device_state": "running", "xruns": 3, "ring_overruns": 2, "dropped_windows": 1,
    "feed_drops": 7, "engine_p50_ms": 4.12, "engine_p99_ms": 9.05, "windows": 120,
    "labels": ["rock", "pop"], "genres": ["rock", "pop"], "model": "MSD_musicnn",
    "engine": "onnxruntime", "final": False,
}


def genre_msg(**changes) -> GenreMessage:
    return GenreMessage(**(GENRE_FIELDS | changes))


def change_msg(**changes) -> ChangeMessage:
    return ChangeMessage(**(CHANGE_FIELDS | changes))


def status_msg(**changes) -> StatusMessage:
    return StatusMessage(**(STATUS_FIELDS | changes))


class TestPlainLines:
    """One line per message, the same as `streamclf subscribe` prints, flushed immediately."""

    def test_lines(self):
        out = io.StringIO()
        view = PlainLines(out)
        messages = [genre_msg(), change_msg(), status_msg(final=True)]
        for msg in messages:
            view.handle(msg)
            assert out.getvalue().endswith(format_message(msg) + "\n")  # written at once
        view.close()
        genre, change, status = out.getvalue().splitlines()
        assert genre.startswith(clock(wall=WALL)) and "rock" in genre and "-18.3 dBFS" in genre
        assert "pop -> rock" in change
        assert "feed drops 7" in status and "final" in status


class TestJsonLines:
    """Each message becomes one strict JSON object with its topic, like `subscribe --json`."""

    def test_records(self):
        out = io.StringIO()
        view = JsonLines(out)
        for msg in (genre_msg(level_dbfs=float("-inf"), probs=[0.25, 0.5]), change_msg(),
                    status_msg()):
            view.handle(msg)
        genre, change, status = (json.loads(line) for line in out.getvalue().splitlines())
        assert genre["topic"] == "genre.main"
        assert genre["genre"] == "rock"
        assert genre["top"][0] == ["rock", 0.71]
        assert genre["level_dbfs"] is None  # -inf is not JSON
        assert genre["probs"] == [0.25, 0.5]
        assert (change["topic"], change["previous"], change["genre"]) == ("change.main", "pop",
                                                                          "rock")
        assert (status["topic"], status["feed_drops"], status["final"]) == ("status.main", 7,
                                                                            False)

    def test_strict_json(self):
        out = io.StringIO()
        JsonLines(out).handle(genre_msg(latency_ms=float("nan")))
        assert "NaN" not in out.getvalue()
        assert json.loads(out.getvalue())["latency_ms"] is None


def recorded(messages, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    view = LiveView(console)
    for msg in messages:
        view.handle(msg)
    view.close()  # draws the final frame
    return console.export_text()


class TestLiveViewRender:
    """The panel shows the newest genre, level, top tags, last change and counters per stream."""

    def test_one_stream(self):
        text = recorded([genre_msg(genre="pop", confidence=0.5), genre_msg(), change_msg(),
                         status_msg()])
        assert "main · running" in text
        assert "rock 0.71" in text and "raw pop" in text and "pop 0.50" not in text
        assert "-18.3 dBFS" in text
        assert "latency 45 ms" in text
        for tag, p in (("rock", "0.71"), ("pop", "0.40"), ("guitar", "0.33")):
            assert any(line.split()[1:2] == [tag] and p in line for line in text.splitlines())
        assert f"changed pop -> rock at {clock(wall=WALL + 1)}" in text
        assert "windows 120  xruns 3  overruns 2  dropped 1  feed drops 7" in text
        assert "engine p50 4.1 ms  p99 9.1 ms" in text
        assert "MSD_musicnn on onnxruntime" in text

    def test_streams_stack_in_arrival_order(self):
        text = recorded([status_msg(stream="b", device_state="lost"), genre_msg(stream="a"),
                         status_msg(stream="a", final=True)])
        assert text.index("b · lost") < text.index("a · stopped")  # final status, not "running"
        assert "running" not in text
        assert "waiting for the first window" in text  # b has no genre yet

    def test_silence_and_unknown(self):
        text = recorded([genre_msg(genre="unknown", candidates=[["rock", 0.3], ["jazz", 0.2]],
                                   silence=True, level_dbfs=float("-inf"))])
        assert "unknown 0.71 (rock?, jazz?)" in text
        assert "-inf dBFS  silence" in text
        assert "no tags during silence" in text
        assert "guitar" not in text and "0.33" not in text  # no stale tag bars under silence

    def test_loudness_and_alarms(self):
        text = recorded([status_msg(momentary_lufs=-14.25, short_term_lufs=-15.0,
                                    integrated_lufs=float("-inf"), loudness_range_lu=3.1,
                                    true_peak_dbtp=-0.5, alarms=["silence", "input"])])
        assert "loudness M -14.2  S -15.0  I -inf LUFS  LRA 3.1 LU  true peak -0.5 dBTP" in text
        assert "ALARM silence, input" in text
        assert "loudness" not in recorded([status_msg()])  # a daemon without [loudness]

    def test_engine_timing_before_the_first_batch(self):
        text = recorded([status_msg(engine_p50_ms=float("nan"), engine_p99_ms=float("nan"))])
        assert "engine p50 – ms  p99 – ms" in text and "nan" not in text

    def test_before_any_message(self):
        assert "waiting for audio" in recorded([])

    def test_level_meter_scale(self):
        assert level_fraction(level_dbfs=0.0) == 1.0
        assert level_fraction(level_dbfs=-30.0) == pytest.approx(0.5)
        assert level_fraction(level_dbfs=-90.0) == 0.0
        assert level_fraction(level_dbfs=float("-inf")) == 0.0
        assert level_fraction(level_dbfs=3.0) == 1.0


class TestMakeView:
    """The sink follows the output: JSON on request, live on a terminal, lines on a pipe."""

    def test_pipe_and_json(self):
        assert isinstance(make_view(io.StringIO(), as_json=False), PlainLines)
        assert isinstance(make_view(io.StringIO(), as_json=True), JsonLines)

    def test_terminal(self):
        master, slave = pty.openpty()
        with os.fdopen(slave, "w") as tty:
            view = make_view(tty, as_json=False)
            view.close()
        os.close(master)
        assert isinstance(view, LiveView)


FEEDER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = {paths!r}
    from test_monitor import genre_msg, status_msg
    from streamclf.monitor import make_view
    view = make_view(sys.stdout, as_json=False)
    for i, genre in enumerate(["jazz", "pop", "rock"]):
        view.handle(genre_msg(genre=genre, seq=i))
        view.handle(status_msg(windows=i + 1))
        time.sleep(0.6)
    view.close()
""")


def test_live_view_redraws_in_a_pseudo_terminal():
    """A real rich Live on a pty redraws in place (cursor movement) as messages arrive."""
    master, slave = pty.openpty()
    env = os.environ | {"TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"}
    env.pop("NO_COLOR", None)
    script = FEEDER.format(paths=[os.path.dirname(__file__)])
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=slave, stdout=slave,
                            stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()
    screen = b"".join(chunks).decode(errors="replace")
    assert "\x1b[?25l" in screen  # the live display hides the cursor while it runs
    assert "\x1b[1A" in screen and "\x1b[2K" in screen  # and redraws in place
    for genre in ("jazz", "pop", "rock"):
        assert genre in screen
    assert screen.rindex("rock") > screen.index("jazz")
