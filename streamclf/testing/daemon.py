"""`streamclf serve` as a child process: one harness for the bench, the tests and the tools.

It runs the real program as systemd would: a config file written for the run, a real
$NOTIFY_SOCKET datagram socket of its own (READY=1, STATUS=, WATCHDOG=1 land there), stderr kept
in a log file (JSON lines when the config says so), and a stop by signal to its own pid with the
exit code and the seconds it took. Whatever happens, leaving the `with` block kills what is
still running and closes every socket and file.

    cfg = write_config(tmp_path, streams=[{"id": "a", "source": "file", "path": CLIP}])
    with FeedRecorder(cfg.endpoint) as feed, Daemon(cfg) as daemon:
        daemon.wait_ready()
        assert feed.wait(lambda: feed.genre_count("a") >= 3, timeout_s=60)
        rc, took_s = daemon.terminate()
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from streamclf.errors import StreamclfError

START_TIMEOUT_S = 90.0  # engine load and first window under a loaded 2-core machine
STOP_TIMEOUT_S = 15.0


def wait_for(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; its last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


# The daemon's threads by the names it gives them in /proc (`streamclf.thread_names`), first match
THREAD_KINDS = (
    ("engine", "engine worker (runner, smoother, feed)"),
    ("stream-", "stream workers (ring → resample → framer, levels)"),
    ("streamclf-", "source readers"),
    ("output-", "outputs"),
    ("icy-", "ICY title watchers"),
    ("ZMQbg", "ZeroMQ's I/O"),
)
MAIN_THREAD = "main thread"
NATIVE_THREADS = "native threads (ONNX Runtime's pool, PortAudio's callback)"  # unnamed


def thread_kind(name: str, *, main: bool = False) -> str:
    """What a thread of the daemon does, from its name in /proc; the threads a library starts
    unnamed (ONNX Runtime's pool, PortAudio's callback) carry the process's name."""
    if main:
        return MAIN_THREAD
    return next((kind for prefix, kind in THREAD_KINDS if name.startswith(prefix)),
                NATIVE_THREADS)


def stat_cpu_s(stat: Path) -> float:
    """User + system CPU seconds in a /proc `stat` file (a process's or one of its threads')."""
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id → (name in /proc, user + system CPU seconds so far) of each thread of `pid`."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads[int(task.name)] = ((task / "comm").read_text().strip(),
                                       stat_cpu_s(task / "stat"))
        except OSError:  # a thread that ended meanwhile
            continue
    return threads


def cpu_by_kind(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], *,
                pid: int) -> Counter[str]:
    """CPU seconds per kind of thread between two `threads_cpu_s` readings (a thread that
    ended in between is not counted)."""
    spent: Counter[str] = Counter()
    for tid, (name, cpu_s) in after.items():
        spent[thread_kind(name, main=tid == pid)] += cpu_s - before.get(tid, (name, 0.0))[1]
    return spent


def free_tcp_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the config ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonConfig:
    """A config file written for one run, and the feed endpoint it names."""

    path: Path
    endpoint: str


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def config_toml(sections: dict[str, dict | list[dict]]) -> str:
    """TOML text for a config given as {section: {key: value}}; a list of dicts (`streams`)
    becomes an array of tables."""
    blocks = []
    for name, body in sections.items():
        tables = body if isinstance(body, list) else [body]
        header = f"[[{name}]]" if isinstance(body, list) else f"[{name}]"
        for table in tables:
            blocks.append("\n".join([header, *(f"{k} = {_toml_value(v)}"
                                               for k, v in table.items())]))
    return "\n".join(blocks) + "\n"


def write_config(folder: Path, *, streams: list[dict], engine: dict | None = None,
                 feed: dict | None = None, service: dict | None = None,
                 name: str = "daemon.toml", **sections: dict) -> DaemonConfig:
    """A config on the CPU engine with one thread, JSON logs, status every 0.5 s and a private
    ipc:// endpoint, unless the given sections say otherwise; `sections` adds others
    (framing, smoothing, alarms, metrics, ...)."""
    feed = dict(feed or {})
    # a private ipc path by default (short: ipc paths are ≤ 107 bytes)
    endpoint = feed.pop("endpoint", None) or f"ipc://{tempfile.mkdtemp(prefix='scf')}/feed"
    text = config_toml({
        "engine": {"kind": "onnxruntime", "threads": 1, **(engine or {})},
        "feed": {"endpoint": endpoint, "status_interval_s": 0.5, **feed},
        "service": {"log_format": "json", "log_level": "info", "watchdog": False,
                    **(service or {})},
        **sections,
        "streams": [{k: str(v) if isinstance(v, Path) else v for k, v in s.items()}
                    for s in streams],
    })
    path = Path(folder) / name
    path.write_text(text)
    return DaemonConfig(path=path, endpoint=endpoint)


# -- the service manager's side -------------------------------------------------------------------


class NotifySocket:
    """A stand-in service manager: a real AF_UNIX datagram socket collecting sd_notify
    datagrams on a thread of its own."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.datagrams: list[str] = []
        self.arrived: list[float] = []  # time.monotonic() at each datagram's arrival
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.1)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="notify", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stopping.is_set():
            try:
                datagram = self._sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            self.arrived.append(time.monotonic())
            self.datagrams.append(datagram)

    def arrival_of(self, line: str) -> float | None:
        """When the first datagram holding `line` arrived (time.monotonic()), or None."""
        for arrived, datagram in zip(list(self.arrived), list(self.datagrams), strict=False):
            if line in datagram.splitlines():
                return arrived
        return None

    def lines(self) -> list[str]:
        """Every KEY=VALUE line received so far, in order."""
        return [line for d in list(self.datagrams) for line in d.splitlines()]

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(1)
        self._sock.close()
        Path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the daemon ---------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident set size of a live process, MiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    msg = f"no VmRSS for pid {pid}"
    raise RuntimeError(msg)


def streamclf_cmd(*args: str) -> list[str]:
    """The installed console script beside this interpreter (what users run), else `-m`."""
    script = Path(sys.executable).parent / "streamclf"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "streamclf.cli"]
    return [*head, *args]


class Daemon:
    """`streamclf serve` on `config` in a child process, started at construction.

    `config` is a written `DaemonConfig` or path, or a dict of keyword arguments for
    `write_config` (written into a folder of the daemon's own). stderr goes to `log_path`;
    `notify` is the daemon's $NOTIFY_SOCKET. `env` adds to the environment (WATCHDOG_USEC, a
    PulseAudio server), `stdin` is what the child reads (DEVNULL, or PIPE to feed it)."""

    def __init__(self, config: DaemonConfig | Path | dict, *, duration_s: float | None = None,
                 env: dict[str, str] | None = None, stdin: int = subprocess.DEVNULL,
                 cwd: Path | None = None) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="scf-daemon-")
        scratch = Path(self._scratch.name)
        if isinstance(config, dict):
            config = write_config(scratch, **config)
        self.config_path = Path(config.path if isinstance(config, DaemonConfig) else config)
        self.endpoint = config.endpoint if isinstance(config, DaemonConfig) else None
        self.log_path = self.config_path.with_suffix(".log")
        self.notify = NotifySocket(scratch / "notify")
        args = streamclf_cmd("serve", "--config", str(self.config_path))
        if duration_s is not None:
            args += ["--duration", str(duration_s)]
        self._log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.DEVNULL,
                                     stderr=self._log, cwd=cwd,
                                     env={**os.environ, **(env or {}),
                                          "NOTIFY_SOCKET": self.notify.path})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds from process start to READY=1; StreamclfError with the log's last line if
        the daemon exits or `timeout_s` passes first."""
        while time.monotonic() - self.started < timeout_s:
            if (ready_at := self.notify.arrival_of("READY=1")) is not None:
                return ready_at - self.started
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        msg = (f"the daemon did not become ready (exit status {self.proc.poll()}): "
               f"{self.last_log_line()}")
        raise StreamclfError(msg)

    def stderr_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def last_log_line(self) -> str:
        lines = self.stderr_text().strip().splitlines()
        return lines[-1] if lines else "no output"

    def events(self) -> list[dict]:
        """The JSON log lines written so far (other lines, e.g. a traceback, are skipped)."""
        events = []
        for line in self.stderr_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def event_names(self) -> list[str]:
        return [e.get("event", "") for e in self.events()]

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S, *,
                  signum: int = signal.SIGTERM) -> tuple[int, float]:
        """SIGTERM (or `signum`); the exit code and the seconds from signal to exit."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        rc = self.proc.wait(timeout_s)
        return rc, time.monotonic() - started

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the daemon so far (/proc/<pid>/stat)."""
        return stat_cpu_s(Path(f"/proc/{self.pid}/stat"))

    def threads_cpu_s(self) -> dict[int, tuple[str, float]]:
        """Each thread's name and CPU seconds so far (`threads_cpu_s`)."""
        return threads_cpu_s(self.pid)

    def memory(self) -> dict:
        """Resident memory now and at peak (bytes), and the torch libraries mapped, if any."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        kib = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
               if line.startswith(("VmRSS", "VmHWM"))}
        maps = Path(f"/proc/{self.pid}/maps").read_text()
        torch_libs = sorted({line.split()[-1] for line in maps.splitlines()
                             if "/torch/" in line or "libtorch" in line})
        return {"rss_bytes": 1024 * kib["VmRSS"], "peak_rss_bytes": 1024 * kib["VmHWM"],
                "torch_mapped": torch_libs}

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def close(self) -> None:
        """Stop what is still running (SIGTERM, then SIGKILL) and release everything."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._log.close()
        self.notify.close()
        self._scratch.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
