"""The daemon as a child process, a feed recorder, fault-injecting engine wrappers, and the
stdin PCM reader's oracle (shared by the hypothesis test and tools/fuzz.py).

Every reliability test runs the real thing: ``streamclf serve`` in its own process on a config
written for the test, a real ZeroMQ subscriber on an ipc:// endpoint, real ONNX Runtime. Only the
two engine faults (a raising batch, an engine slower than real time) wrap the real window runner
in-process, because no honest way exists to make the real engine fail from outside.

Usage:

    cfg = write_config(tmp_path, streams=[{"id": "a", "source": "file", "path": CLIP, "loop": True}])
    with FeedRecorder(cfg.endpoint) as feed, Daemon(cfg.path) as daemon:
        assert feed.wait(lambda: feed.genre_count("a") >= 3, timeout_s=60)
        rc, took_s = daemon.terminate()
    assert feed.seq_gaps() == {} and feed.final_status("a") is not None
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
from audio_helpers import wait_for
from paced_wav_server import PacedWavServer  # noqa: F401 — the tests import it from here

from streamclf.audio.pcm import PCM_FORMATS, StdinSource
from streamclf.audio.ring import RingBuffer
from streamclf.feed.schema import GenreMessage, Message, StatusMessage
from streamclf.feed.subscriber import Subscriber

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "streamclf" / "data" / "clip.ogg"
START_TIMEOUT_S = 90.0  # engine load and first window under a loaded 2-core machine
EXIT_PROMISE_S = 2.0  # docs/reliability.md: SIGTERM → exit within 2 s


# -- config -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonConfig:
    path: Path
    endpoint: str


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _toml_table(header: str, values: dict) -> str:
    lines = [header] + [f"{key} = {_toml_value(v)}" for key, v in values.items()]
    return "\n".join(lines) + "\n"


def write_config(folder: Path, *, streams: list[dict], engine: dict | None = None,
                 feed: dict | None = None, framing: dict | None = None,
                 service: dict | None = None, name: str = "daemon.toml") -> DaemonConfig:
    """A config on the CPU engine, JSON logs, status every 0.5 s, a private ipc:// endpoint."""
    feed = dict(feed or {})
    # a private ipc path by default (short: ipc paths are ≤ 107 bytes)
    endpoint = feed.pop("endpoint", f"ipc://{tempfile.mkdtemp(prefix='scf')}/feed")
    sections = [
        _toml_table("[engine]", {"kind": "onnxruntime", "threads": 1, **(engine or {})}),
        _toml_table("[framing]", framing or {}),
        _toml_table("[feed]", {"endpoint": endpoint, "status_interval_s": 0.5, **feed}),
        _toml_table("[service]", {"log_format": "json", "log_level": "info", "watchdog": False,
                                  **(service or {})}),
        *(_toml_table("[[streams]]", stream) for stream in streams),
    ]
    path = Path(folder) / name
    path.write_text("\n".join(sections))
    return DaemonConfig(path=path, endpoint=endpoint)


# -- the daemon -------------------------------------------------------------------------------


class NotifyListener:
    """A $NOTIFY_SOCKET of our own: the datagrams the daemon sends to 'systemd'."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.05)
        self.received: list[str] = []

    def poll(self) -> list[str]:
        try:
            while True:
                self.received.append(self._sock.recv(4096).decode())
        except TimeoutError:
            return self.received

    def close(self) -> None:
        self._sock.close()



class Daemon:
    """``streamclf serve`` in a child process; stopped by its own pid, logs kept as JSON lines."""

    def __init__(self, config_path: Path, *, duration_s: float | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.log_path = Path(config_path).with_suffix(".log")
        args = [sys.executable, "-m", "streamclf.cli", "serve", "--config", str(config_path)]
        if duration_s is not None:
            args += ["--duration", str(duration_s)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._log, env={**os.environ, **(env or {})},
                                     cwd=REPO)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict]:
        """The JSON log lines written so far (other lines, e.g. a traceback, are skipped)."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def event_names(self) -> list[str]:
        return [e.get("event", "") for e in self.events()]

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def terminate(self, timeout_s: float = 15.0, *,
                  signum: int = signal.SIGTERM) -> tuple[int, float]:
        """SIGTERM (or `signum`); returns the exit code and the seconds from signal to exit."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        rc = self.proc.wait(timeout_s)
        return rc, time.monotonic() - started

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rss_mb(pid: int) -> float:
    """Resident set size of a live process, MiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    msg = f"no VmRSS for pid {pid}"
    raise RuntimeError(msg)


def children_named(pid: int, name: str) -> list[int]:
    """Direct child processes of ``pid`` whose command name is ``name`` (e.g. the ffmpeg reader)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and comm == name:
            found.append(int(entry.name))
    return found


# -- the feed ---------------------------------------------------------------------------------


class FeedRecorder:
    """Records every message of a feed in a thread of its own (the SUB socket lives there)."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",)) -> None:
        self.endpoint = endpoint
        self.topics = topics
        self.messages: list[Message] = []
        self.lost = 0
        self.malformed = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed-recorder", daemon=True)

    def _run(self) -> None:
        with Subscriber(self.endpoint, self.topics) as sub:
            while not self._stopping.is_set():
                message = sub.recv(timeout_s=0.1)
                if message is not None:
                    self.messages.append(message)
                self.lost, self.malformed = sub.lost, sub.malformed

    def of(self, kind: type, stream: str | None = None) -> list:
        return [m for m in list(self.messages)
                if isinstance(m, kind) and (stream is None or m.stream == stream)]

    def genre_count(self, stream: str) -> int:
        return len(self.of(GenreMessage, stream))

    def last_status(self, stream: str) -> StatusMessage | None:
        statuses = self.of(StatusMessage, stream)
        return statuses[-1] if statuses else None

    def final_status(self, stream: str) -> StatusMessage | None:
        finals = [m for m in self.of(StatusMessage, stream) if m.final]
        return finals[-1] if finals else None

    def seq_gaps(self) -> dict[str, list[tuple[int, int]]]:
        """Per topic, each (previous seq, next seq) pair that is not consecutive."""
        last: dict[str, int] = {}
        gaps: dict[str, list[tuple[int, int]]] = {}
        for m in list(self.messages):
            if m.topic in last and m.seq != last[m.topic] + 1:
                gaps.setdefault(m.topic, []).append((last[m.topic], m.seq))
            last[m.topic] = m.seq
        return gaps

    def wait(self, predicate: Callable[[], bool], *, timeout_s: float) -> bool:
        return wait_for(predicate, timeout_s=timeout_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, settle_s: float = 0.5) -> None:
        """Stop after ``settle_s`` more of listening (so a final status in flight arrives)."""
        if self._thread.is_alive():
            time.sleep(settle_s)
            self._stopping.set()
            self._thread.join(5)


def t1_steps_missing(messages: list[GenreMessage], hop_s: float) -> int:
    """Windows missing between consecutive genre messages of one stream, from their stream times
    (a drop shows as a t1 step of k hops: k - 1 windows are missing)."""
    t1 = np.array([m.t1 for m in messages])
    if t1.size < 2:
        return 0
    return int(np.sum(np.round(np.diff(t1) / hop_s) - 1))


# -- a live network stream ----------------------------------------------------------------------


# -- the stdin PCM reader -----------------------------------------------------------------------


class ShortReads(io.RawIOBase):
    """A pipe that hands out its bytes in the given read sizes (cycled), as pipes do."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = memoryview(data)
        self._sizes = sizes
        self._at = 0
        self._reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = min(len(buffer), self._sizes[self._reads % len(self._sizes)])
        self._reads += 1
        chunk = self._data[self._at : self._at + size]
        buffer[: len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)


def check_stdin_reader(data: bytes, *, fmt: str, channels: int, blocksize: int,
                       sizes: list[int]) -> None:
    """Raw PCM through ``StdinSource`` from a pipe that hands it out in ``sizes`` pieces: the
    whole frames come out exactly (non-finite floats as 0, counted), a trailing partial frame is
    dropped, and the source ends by itself (within 10 s: a hang fails too)."""
    dtype = PCM_FORMATS[fmt]
    frames = len(data) // (dtype.itemsize * channels)
    source = StdinSource(sample_rate=16000, channels=channels, fmt=fmt,
                         stream=ShortReads(data, sizes), blocksize=blocksize)  # fmt: skip
    source.open()
    ring = RingBuffer(max(frames, 1), channels)
    source.start(ring)
    assert wait_for(lambda: source.state == "ended", timeout_s=10, interval_s=0.001), source.state
    source.stop()
    out = np.zeros((max(frames, 1), channels), np.float32)
    n, _ = ring.read(out)
    expected = np.frombuffer(data, dtype, count=frames * channels).reshape(frames, channels)
    expected = expected.astype(np.float32) * (np.float32(1 / 32768) if fmt == "s16le" else 1)
    finite = np.isfinite(expected)
    assert n == frames
    np.testing.assert_array_equal(out[:n], np.where(finite, expected, 0))
    assert source.nonfinite_samples == np.count_nonzero(~finite)


# -- engine faults (in-process only) ------------------------------------------------------------


class FaultyRunner:
    """The real window runner (engine plus incremental features) with faults switched by the
    test: while ``failing``, every ``run`` call (one batch) raises; ``delay_per_window_s`` of
    sleep per window makes it slower than real time. Everything else passes through, so
    batching, outputs and latencies are the real engine's."""

    def __init__(self, runner, *, delay_per_window_s: float = 0.0) -> None:
        self._runner = runner
        self.delay_per_window_s = delay_per_window_s
        self.failing = False
        self.calls = 0
        self.failed_calls = 0

    def run(self, items):
        self.calls += 1
        if self.delay_per_window_s:
            time.sleep(self.delay_per_window_s * len(items))
        if self.failing:
            self.failed_calls += 1
            msg = f"injected fault on call {self.calls}"
            raise RuntimeError(msg)
        return self._runner.run(items)

    def __getattr__(self, name: str):
        return getattr(self._runner, name)
