"""`streamclf bench`: framer throughput, engines, end-to-end latency, capacity, memory, start-up.

Everything is measured on the machine it runs on, in one run, against a floor computed in the
same run (FLOPs over the measured matrix-multiply rate, the interpreter's own start and an ONNX
Runtime session's own memory). The daemon parts run the real `streamclf serve` as a subprocess
with a generated config (file streams paced in real time from the bundled clip), a real
$NOTIFY_SOCKET datagram socket for READY and a real subscriber on loopback.

Sections run in the order of `SECTIONS`; each measures into a dict (with its `checks`, the
issue's targets) and renders a markdown section. A later section sees earlier results.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import structlog

from streamclf.audio.files import BUNDLED_CLIP as CLIP
from streamclf.bench.onair import bench_onair, render_onair
from streamclf.config import EngineConfig
from streamclf.errors import StreamclfError
from streamclf.features.mel import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE_HZ, frames_for_seconds

log = structlog.get_logger(__name__)

DEFAULTS = EngineConfig()  # the daemon under test runs the default model and options
MODEL = DEFAULTS.model
MAX_BATCH = DEFAULTS.max_batch  # the daemon's warm-up runs one batch of this size
TORCH_MODEL = "MSD_musicnn"  # the torch engine rebuilds only the original models
MIB = 1024 * 1024

BLOCK_S = 0.05  # the pipeline's stream workers read about 50 ms per ring read
FRAMER_HOPS_S = (1.0, 0.25)
E2E_HOP_S = 0.25  # 300 windows in 75 s of real time; the latency of one window does not depend on it
CAPACITY_HOP_S = 1.0
MAX_LATENCY_GROWTH = 0.02  # s of latency per s: a backlog growing this fast is not sustained
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0

TARGET_FRAMER_REALTIME = 1000.0
TARGET_FRAMER_HOP_SCALING = 0.5  # per-window cost at hop 0.25 s / at 1 s; O(hop) gives 0.25
TARGET_E2E_VS_ENGINE_P99 = 1.5
TARGET_RSS_BYTES = 250e6
TARGET_READY_S = 3.0
TARGET_CAPACITY_SHARE = 0.8


def _check(value: float, target: float, *, at_most: bool = False) -> dict:
    """One target in bench_engines' form: value, target, ok (≥ target unless `at_most`)."""
    ok = value <= target if at_most else value >= target
    return {"value": value, "target": target, "ok": bool(ok), "at_most": at_most}


# -- 1. framer ----------------------------------------------------------------------------------


@contextlib.contextmanager
def one_core() -> Iterator[int]:
    """Pin every thread of this process (BLAS helpers included) to one CPU, then restore."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, {cpu})
    try:
        yield cpu
    finally:
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)


def best_seconds(fn: Callable[[], object], *, repeats: int) -> float:
    """Shortest wall time of `repeats` calls (the least disturbed by other load)."""
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def stream_framer(y: np.ndarray, *, hop_s: float, block: int) -> int:
    """Push `y` through a fresh LogMelFramer in blocks of `block` samples; windows emitted."""
    from streamclf.features.framer import LogMelFramer

    framer = LogMelFramer(hop_frames=frames_for_seconds(hop_s))
    n = 0
    for i in range(0, y.shape[0], block):
        n += sum(1 for _ in framer.push(y[i : i + block]))
    return n


def librosa_logmel(y: np.ndarray) -> np.ndarray:
    """musicnn's front end with librosa itself: mel power, then log10(10000 x + 1)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=SAMPLE_RATE_HZ, n_fft=N_FFT, hop_length=HOP_LENGTH,
                                         n_mels=N_MELS)
    return np.log10(10000.0 * mel + 1.0)


def naive_librosa(y: np.ndarray, *, hop_s: float) -> int:
    """The naive streaming way: at every hop, librosa over the last 3 s again; windows emitted."""
    span = (frames_for_seconds(3.0) - 1) * HOP_LENGTH  # 187 centred frames
    hop = frames_for_seconds(hop_s) * HOP_LENGTH
    n = 0
    for end in range(span, y.shape[0] + 1, hop):
        librosa_logmel(y[end - span : end])
        n += 1
    return n


def framer_flops_per_audio_s() -> float:
    """FFT and mel work per second of audio: a real FFT ≈ 2.5 N log2 N, window and power 4 per
    bin, the mel product 2 · bins · mels (dense, as computed), the log 3 per mel."""
    bins = N_FFT // 2 + 1
    per_frame = 2.5 * N_FFT * math.log2(N_FFT) + N_FFT + 3 * bins + 2 * bins * N_MELS + 3 * N_MELS
    return per_frame * SAMPLE_RATE_HZ / HOP_LENGTH


def bench_framer(ctx: Context) -> dict:
    from streamclf.bench.engines import sgemm_gflops
    from streamclf.features.framer import load_mono_16k
    from streamclf.features.mel import logmel

    y = load_mono_16k(CLIP)
    if ctx.quick:
        y = y[: 6 * SAMPLE_RATE_HZ]
    audio_s = y.shape[0] / SAMPLE_RATE_HZ
    repeats = 1 if ctx.quick else 3
    rows: dict[str, dict] = {}

    def row(name: str, seconds: float, windows: int | None = None) -> None:
        rows[name] = {"seconds": seconds, "x_realtime": audio_s / seconds, "windows": windows,
                      "us_per_window": 1e6 * seconds / windows if windows else None}

    with one_core() as cpu:
        sgemm_1core = sgemm_gflops(min_time_s=0.2 if ctx.quick else 0.5)
        for hop_s, block_s in ((1.0, BLOCK_S), (0.25, BLOCK_S), (1.0, 1.0)):
            size = int(block_s * SAMPLE_RATE_HZ)
            windows = stream_framer(y, hop_s=hop_s, block=size)
            row(f"framer_hop_{hop_s:g}s_block_{1e3 * block_s:g}ms", best_seconds(
                lambda h=hop_s, b=size: stream_framer(y, hop_s=h, block=b), repeats=repeats),
                windows)
        row("offline_logmel", best_seconds(lambda: logmel(y), repeats=repeats))
        try:
            import librosa  # noqa: F401
        except ImportError:
            librosa_note = "librosa is not installed (dev extra): its comparisons were skipped"
        else:
            librosa_note = None
            librosa_logmel(y[: SAMPLE_RATE_HZ])  # first call builds librosa's caches
            row("librosa_whole_file", best_seconds(lambda: librosa_logmel(y), repeats=repeats))
            for hop_s in FRAMER_HOPS_S:
                windows = naive_librosa(y, hop_s=hop_s)
                row(f"librosa_naive_hop_{hop_s:g}s", best_seconds(
                    lambda h=hop_s: naive_librosa(y, hop_s=h), repeats=repeats), windows)
    framer = rows["framer_hop_1s_block_50ms"]
    ratios = {name: framer["x_realtime"] / r["x_realtime"] for name, r in rows.items()
              if name.startswith("librosa")}
    flops = framer_flops_per_audio_s()
    scaling = rows["framer_hop_0.25s_block_50ms"]["us_per_window"] / framer["us_per_window"]
    return {
        "audio_s": audio_s,
        "cpu": cpu,
        "rows": rows,
        "speedup_vs": ratios,
        "librosa_note": librosa_note,
        "floor": {"flops_per_audio_s": flops, "sgemm_gflops_1core": sgemm_1core,
                  "x_realtime_ceiling": sgemm_1core * 1e9 / flops},
        "checks": {
            "framer_x_realtime": _check(framer["x_realtime"], TARGET_FRAMER_REALTIME),
            "framer_window_cost_hop_0.25s_vs_1s": _check(scaling, TARGET_FRAMER_HOP_SCALING,
                                                          at_most=True),
        },
    }


def render_framer(r: dict) -> str:
    lines = [
        (f"The bundled clip ({r['audio_s']:.1f} s, 16 kHz), all threads pinned to CPU {r['cpu']}, "
         "best of the repeats. The streaming framer gets 50 ms blocks (what the pipeline's ring "
         "reads give it; the target is checked here) or 1 s blocks; the naive way recomputes "
         "librosa over the last 3 s at every hop."),
        "",
        "| front end | × real time | µs per window | windows |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in r["rows"].items():
        per = f"{row['us_per_window']:.0f}" if row["us_per_window"] else "–"
        lines.append(f"| {name} | {row['x_realtime']:.0f} | {per} | {row['windows'] or '–'} |")
    lines.append("")
    for name, ratio in r["speedup_vs"].items():
        lines.append(f"- streaming framer (hop 1 s, 50 ms blocks) / {name}: {ratio:.1f}× the speed")
    if r["librosa_note"]:
        lines.append(f"- {r['librosa_note']}")
    floor = r["floor"]
    lines.append(
        f"- floor: {floor['flops_per_audio_s'] / 1e6:.2f} MFLOP of FFT and mel work per second of "
        f"audio at one core's sgemm rate ({floor['sgemm_gflops_1core']:.0f} GFLOP/s) allows "
        f"{floor['x_realtime_ceiling']:.0f}× real time; the rest is numpy call overhead per "
        "block, which is why larger blocks are faster."
    )
    return "\n".join(lines) + "\n"


# -- 2. engines ---------------------------------------------------------------------------------


def bench_engines(ctx: Context) -> dict:
    from streamclf.bench.engines import run_engine_bench
    from streamclf.models.card import load_model_card

    kinds = ["onnxruntime"] if ctx.quick else None  # --quick leaves out the slow torch engine
    results = run_engine_bench(load_model_card(MODEL), kinds=kinds, quick=ctx.quick)
    flops = results["flops_per_window"]
    results["floor_ms_per_window"] = (
        1e3 * flops / (results["machine"]["sgemm_gflops"] * 1e9) if flops else None
    )
    if not ctx.quick and MODEL != TORCH_MODEL:  # torch side by side needs a model it can build
        single = run_engine_bench(load_model_card(TORCH_MODEL), quick=False)
        results["torch_model"] = single
        results["checks"] |= {f"{name} ({TORCH_MODEL})": c for name, c in single["checks"].items()}
    return results


def render_engines(r: dict) -> str:
    from streamclf.bench.engines import render_markdown

    text = render_markdown(r)
    if "torch_model" in r:
        text += ("\nThe torch engine builds only the four original models, so onnxruntime and torch "
                 "side by side on one of them:\n\n"
                 + render_markdown(r["torch_model"]))
    floor = r["floor_ms_per_window"]
    if floor:
        text += (f"- floor: {r['flops_per_window'] / 1e9:.2f} GFLOP per window over the measured "
                 f"sgemm rate = {floor:.1f} ms per window (all cores).\n")
    return text


def ort_row(results: dict) -> dict:
    """The onnxruntime row of the engines section (the CPU engine the targets are about)."""
    for row in results["engines"]["engines"]:
        if row["engine"] == "onnxruntime":
            return row
    msg = "the onnxruntime engine did not run"
    raise StreamclfError(msg)


def bench_incremental(ctx: Context) -> dict:
    from streamclf.bench.incremental import bench_incremental

    return bench_incremental(MODEL, quick=ctx.quick)


def render_incremental(r: dict) -> str:
    from streamclf.bench.incremental import format_incremental

    return format_incremental(r) + "\n"


# -- the daemon as a subprocess -----------------------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_config(*, streams: int, hop_s: float, audio: Path, endpoint: str) -> str:
    """A serve config: the CPU engine, `streams` looping real-time file streams of `audio`."""
    lines = [
        "[engine]", 'kind = "onnxruntime"',  # the CPU engine; model and options: the defaults
        "[framing]", f"hop_s = {hop_s}",
        "[feed]", f"endpoint = {json.dumps(endpoint)}", "send_hwm = 10000", "status_interval_s = 1.0",
        "[service]", 'log_level = "warning"', 'log_format = "json"', "watchdog = false",
    ]
    for i in range(streams):
        lines += ["[[streams]]", f'id = "s{i}"', 'source = "file"', f"path = {json.dumps(str(audio))}",
                  "loop = true", "realtime = true"]
    return "\n".join(lines) + "\n"


@dataclass
class Received:
    """Feed messages of one daemon run with their receive wall-clock time."""

    genre: list[tuple[object, float]] = field(default_factory=list)
    status: dict[str, object] = field(default_factory=dict)  # the latest per stream

    def e2e_ms(self) -> np.ndarray:
        """Arrival of a window's last sample → subscriber: the daemon's own latency_ms
        (monotonic, arrival → message built) plus the publish → receive part, `wall` against
        the receive time (the same machine's clock on both sides)."""
        return np.array([m.latency_ms + 1e3 * (received - m.wall) for m, received in self.genre])

    def per_stream(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m, _ in self.genre:
            counts[m.stream] = counts.get(m.stream, 0) + 1
        return counts


class Daemon:
    """One `streamclf serve` subprocess: its READY time, its /proc figures, its feed."""

    def __init__(self, workdir: Path, *, streams: int, hop_s: float, audio: Path) -> None:
        self.workdir = workdir
        self.streams = streams
        self.endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.config_path = workdir / f"serve-{streams}.toml"
        self.config_path.write_text(daemon_config(streams=streams, hop_s=hop_s, audio=audio,
                                                  endpoint=self.endpoint))
        self.ready_s = math.nan
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        from streamclf.feed.subscriber import Subscriber

        notify_path = self.workdir / "notify"
        notify_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self.subscriber = Subscriber(self.endpoint, ("genre.", "status."))  # before the bind: no slow joiner
        self._stderr = (self.workdir / f"serve-{self.streams}.log").open("wb")
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamclf.cli", "serve", "--config", str(self.config_path)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr)
        try:
            self._wait_ready(started)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, started: float) -> None:
        deadline = started + READY_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            self._notify.settimeout(min(left, 0.5))
            try:
                data = self._notify.recv(4096)
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
                continue
            if b"READY=1" in data.split(b"\n"):
                self.ready_s = time.monotonic() - started
                return
        self._stderr.flush()
        tail = (self.workdir / f"serve-{self.streams}.log").read_text(errors="replace")
        tail = tail.strip().splitlines()[-1] if tail.strip() else "no output"
        msg = f"the daemon under test did not become ready ({self.streams} streams): {tail}"
        raise StreamclfError(msg)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.subscriber.close()
        self._notify.close()
        self._stderr.close()

    def collect(self, until: Callable[[Received], bool], *, timeout_s: float,
                into: Received | None = None) -> Received:
        """Receive until `until(received)` holds or `timeout_s` passes."""
        from streamclf.feed.schema import GenreMessage

        got = Received() if into is None else into
        deadline = time.monotonic() + timeout_s
        while not until(got) and (left := deadline - time.monotonic()) > 0:
            message = self.subscriber.recv(timeout_s=min(left, 0.5))
            if message is None:
                if self.proc.poll() is not None:
                    msg = f"the daemon under test exited with status {self.proc.returncode}"
                    raise StreamclfError(msg)
                continue
            if isinstance(message, GenreMessage):
                got.genre.append((message, time.time()))
            else:
                got.status[message.stream] = message
        return got

    def cpu_s(self) -> float:
        """User + system CPU seconds of the daemon so far (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict:
        """Resident memory now and at peak, and whether any torch library is mapped."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
               if line.startswith(("VmRSS", "VmHWM"))}
        maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
        torch_libs = sorted({line.split()[-1] for line in maps.splitlines()
                             if "/torch/" in line or "libtorch" in line})
        return {"rss_bytes": 1024 * kib["VmRSS"], "peak_rss_bytes": 1024 * kib["VmHWM"],
                "torch_mapped": torch_libs}


# -- 3. end to end ------------------------------------------------------------------------------


def bench_end_to_end(ctx: Context) -> dict:
    windows = 30 if ctx.quick else 300
    warmup = 2
    with Daemon(ctx.workdir, streams=1, hop_s=E2E_HOP_S, audio=ctx.audio) as daemon:
        ctx.ready_s.append(daemon.ready_s)
        got = daemon.collect(lambda g: len(g.genre) >= warmup + windows,
                             timeout_s=(warmup + windows) * E2E_HOP_S * 2 + 20)
        memory = daemon.memory()
        ready_s = daemon.ready_s
    if len(got.genre) < warmup + windows:
        msg = f"end to end: only {len(got.genre)} of {warmup + windows} windows arrived"
        raise StreamclfError(msg)
    got.genre = got.genre[warmup:]
    e2e = got.e2e_ms()
    in_daemon = np.array([m.latency_ms for m, _ in got.genre])
    engine_p99 = ort_row(ctx.results)["latency_ms_p99"]
    p99 = float(np.percentile(e2e, 99))
    return {
        "hop_s": E2E_HOP_S,
        "windows": int(e2e.size),
        "e2e_ms": {"p50": float(np.percentile(e2e, 50)), "p99": p99, "max": float(e2e.max())},
        "in_daemon_ms": {"p50": float(np.percentile(in_daemon, 50)),
                         "p99": float(np.percentile(in_daemon, 99))},
        "engine_p99_ms_batch1": engine_p99,
        "ready_s": ready_s,
        "memory": memory,
        "checks": {"e2e_p99_vs_engine_p99": _check(p99 / engine_p99, TARGET_E2E_VS_ENGINE_P99,
                                                   at_most=True)},
    }


def render_end_to_end(r: dict) -> str:
    e2e, inside = r["e2e_ms"], r["in_daemon_ms"]
    return (
        f"One file stream paced in real time, hop {r['hop_s']:g} s, {r['windows']} windows, a "
        "subscriber on loopback. Measured from the monotonic time at which the window's last "
        "sample entered the ring (the daemon's `latency_ms`, up to the message being built) plus "
        "publish → receive (`wall` against the subscriber's clock, the same machine).\n\n"
        "| | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: |\n"
        f"| ring → subscriber | {e2e['p50']:.1f} | {e2e['p99']:.1f} | {e2e['max']:.1f} |\n"
        f"| ring → publish (in the daemon) | {inside['p50']:.1f} | {inside['p99']:.1f} | – |\n\n"
        f"- floor: the engine alone, p99 at batch 1 = {r['engine_p99_ms_batch1']:.1f} ms.\n"
    )


# -- 4. capacity --------------------------------------------------------------------------------


def capacity_trial(ctx: Context, streams: int, *, measure_s: float) -> dict:
    """`streams` real-time streams at hop 1 s: sustained when nothing was dropped, every stream
    got its windows, and no backlog builds up: the latency does not grow (a deficit of d % of
    the demand grows it by d/100 s per s) and its p99 stays under two hops (the windows of all
    streams arrive together, so at capacity the last of a batch waits about one hop)."""
    with Daemon(ctx.workdir, streams=streams, hop_s=CAPACITY_HOP_S, audio=ctx.audio) as daemon:
        ctx.ready_s.append(daemon.ready_s)
        warm = daemon.collect(lambda g: len(g.per_stream()) >= streams, timeout_s=15.0)
        cpu0, t0 = daemon.cpu_s(), time.monotonic()
        got = daemon.collect(lambda g: False, timeout_s=measure_s, into=Received(status=warm.status))
        cpu_percent = 100.0 * (daemon.cpu_s() - cpu0) / (time.monotonic() - t0)
    counts = got.per_stream()
    expected = int(measure_s / CAPACITY_HOP_S) - 1
    dropped = sum(s.dropped_windows for s in got.status.values())
    overruns = sum(s.ring_overruns for s in got.status.values())
    e2e = got.e2e_ms()
    p99 = float(np.percentile(e2e, 99)) if e2e.size else math.inf
    received = np.array([r for _, r in got.genre])
    growth = float(np.polyfit(received, e2e / 1e3, 1)[0]) if e2e.size > 2 else math.inf
    fewest = min((counts.get(f"s{i}", 0) for i in range(streams)), default=0)
    return {
        "streams": streams,
        "sustained": bool(dropped == 0 and overruns == 0 and fewest >= expected
                          and growth <= MAX_LATENCY_GROWTH and p99 <= 2e3 * CAPACITY_HOP_S),
        "dropped_windows": dropped,
        "ring_overrun_samples": overruns,
        "fewest_windows": fewest,
        "expected_windows": expected,
        "e2e_p99_ms": p99,
        "latency_growth_s_per_s": growth,
        "cpu_percent": cpu_percent,
        "cpu_percent_per_stream": cpu_percent / streams,
    }


def bench_capacity(ctx: Context) -> dict:
    engine_wps = max(ort_row(ctx.results)["windows_per_s"].values())
    engine_streams = engine_wps * CAPACITY_HOP_S
    incremental = {r["hop_s"]: r for r in ctx.results.get("incremental", {}).get("hops", [])}
    incremental_streams = incremental.get(CAPACITY_HOP_S, {}).get("incremental_capacity_streams")
    measure_s, max_trials = (5.0, 1) if ctx.quick else (15.0, 6)
    # First at the target, then up by a quarter until a count fails, then bisect.
    n = 2 if ctx.quick else max(1, int(TARGET_CAPACITY_SHARE * engine_streams))
    lo, hi = 0, None  # the most streams sustained, the fewest that were not
    trials = []
    while len(trials) < max_trials and (hi is None or hi - lo > 1):
        trial = capacity_trial(ctx, n, measure_s=measure_s)
        log.info("capacity_trial", **trial)
        trials.append(trial)
        lo, hi = (n, hi) if trial["sustained"] else (lo, n)
        n = max(lo + 1, math.ceil(1.25 * lo)) if hi is None else (lo + hi) // 2
    best = next((t for t in trials if t["streams"] == lo), None)
    return {
        "hop_s": CAPACITY_HOP_S,
        "measure_s": measure_s,
        "streams": lo,
        "exact": hi is not None and hi - lo == 1,
        "engine_windows_per_s": engine_wps,
        "engine_bound_streams": engine_streams,
        "incremental_bound_streams": incremental_streams,
        "cpu_percent_per_stream": best["cpu_percent_per_stream"] if best else None,
        "trials": trials,
        "checks": {"capacity_vs_engine_bound": _check(lo / engine_streams, TARGET_CAPACITY_SHARE)},
    }


def render_capacity(r: dict) -> str:
    lines = [
        (f"Concurrent real-time file streams at hop {r['hop_s']:g} s, {r['measure_s']:g} s "
         "measured per trial. Sustained = no dropped window, no ring overrun, every stream got its "
         f"windows, a latency trend under {MAX_LATENCY_GROWTH:g} s/s (no growing backlog) and a p99 "
         "ring → subscriber under two hops."),
        "",
        ("| streams | sustained | dropped windows | ring overruns | fewest windows | p99 ms | "
         "latency trend s/s | CPU % | CPU % per stream |"),
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in r["trials"]:
        lines.append(
            f"| {t['streams']} | {'yes' if t['sustained'] else 'no'} | {t['dropped_windows']} | "
            f"{t['ring_overrun_samples']} | {t['fewest_windows']}/{t['expected_windows']} | "
            f"{t['e2e_p99_ms']:.0f} | {t['latency_growth_s_per_s']:+.3f} | {t['cpu_percent']:.0f} | "
            f"{t['cpu_percent_per_stream']:.1f} |"
        )
    lines += [
        "",
        f"- capacity: {r['streams']} streams"
        + ("" if r["exact"] else " (the search stopped early: a lower bound)"),
        (f"- floor: the engine's best batched throughput, {r['engine_windows_per_s']:.0f} "
         f"windows/s = {r['engine_bound_streams']:.0f} streams at hop {r['hop_s']:g} s."),
    ]
    if r["incremental_bound_streams"]:
        lines.append(f"- the daemon runs incremental inference (the default), whose own bound at this "
                     f"hop is {r['incremental_bound_streams']:.0f} streams (section 3).")
    return "\n".join(lines) + "\n"


# -- 5. memory and start-up ---------------------------------------------------------------------

_ORT_RSS_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
for batch in (1, int(sys.argv[2])):
    s.run(None, {"logmel": np.zeros((batch, 187, 96), np.float32)})
    print(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
"""


def python_start_s(*, repeats: int) -> float:
    """The bare interpreter's start (`python -c pass`), best of `repeats`."""
    return best_seconds(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
                        repeats=repeats)


def ort_session_rss_bytes(*, batch: int) -> tuple[int, int]:
    """RSS of a process holding only numpy, onnxruntime and the model's session (ONNX Runtime's
    defaults, memory arena on) after a run at batch 1, then after one at `batch`."""
    from streamclf.backends.base import model_path
    from streamclf.models.card import load_model_card

    path = str(model_path(load_model_card(MODEL)))
    out = subprocess.run([sys.executable, "-c", _ORT_RSS_SCRIPT, path, str(batch)],
                         check=True, capture_output=True, text=True).stdout.split()
    return 1024 * int(out[0]), 1024 * int(out[1])


def bench_daemon(ctx: Context) -> dict:
    e2e = ctx.results["end_to_end"]
    memory = e2e["memory"]
    ready = np.array(ctx.ready_s)
    single, full = ort_session_rss_bytes(batch=MAX_BATCH)
    return {
        "ready_s": e2e["ready_s"],
        "ready_s_all_starts": {"n": int(ready.size), "median": float(np.median(ready)),
                               "max": float(ready.max())},
        "rss_bytes": memory["rss_bytes"],
        "peak_rss_bytes": memory["peak_rss_bytes"],
        "torch_mapped": memory["torch_mapped"],
        "floor": {"python_start_s": python_start_s(repeats=3),
                  "ort_session_rss_bytes": single, "ort_session_rss_bytes_max_batch": full,
                  "max_batch": MAX_BATCH},
        "checks": {
            "rss_bytes": _check(memory["rss_bytes"], TARGET_RSS_BYTES, at_most=True),
            "torch_libraries_mapped": _check(len(memory["torch_mapped"]), 0, at_most=True),
            "ready_s": _check(e2e["ready_s"], TARGET_READY_S, at_most=True),
        },
    }


def render_daemon(r: dict) -> str:
    floor = r["floor"]
    starts = r["ready_s_all_starts"]
    torch = ", ".join(r["torch_mapped"]) or "none"
    return (
        "The daemon of the end-to-end run (CPU engine, one stream) after its windows; start-up is "
        "process start → READY=1 on a real $NOTIFY_SOCKET datagram socket.\n\n"
        "| | daemon | floor |\n| --- | ---: | ---: |\n"
        f"| RSS after warm-up | {r['rss_bytes'] / MIB:.0f} MiB ({r['rss_bytes'] / 1e6:.0f} MB) | "
        f"{floor['ort_session_rss_bytes'] / MIB:.0f} MiB (numpy + onnxruntime + the session alone, "
        f"batch 1; {floor['ort_session_rss_bytes_max_batch'] / MIB:.0f} MiB once it has run a "
        f"batch of {floor['max_batch']}) |\n"
        f"| peak RSS | {r['peak_rss_bytes'] / MIB:.0f} MiB | – |\n"
        f"| start → READY | {r['ready_s']:.2f} s | {floor['python_start_s']:.2f} s (`python -c pass`) |\n\n"
        f"- READY over all {starts['n']} daemon starts of this run (capacity trials included): "
        f"median {starts['median']:.2f} s, max {starts['max']:.2f} s.\n"
        f"- torch libraries mapped in the daemon (/proc/<pid>/maps): {torch}.\n"
    )


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a section may use: the mode, a scratch folder, the stream audio, earlier results."""

    quick: bool
    workdir: Path
    audio: Path
    results: dict = field(default_factory=dict)
    ready_s: list[float] = field(default_factory=list)  # every daemon start of this run


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    measure: Callable[[Context], dict]
    render: Callable[[dict], str]


SECTIONS: list[Section] = [
    Section("framer", "Framer throughput (one core)", bench_framer, render_framer),
    Section("engines", "Engines", bench_engines, render_engines),
    Section("incremental", "Incremental inference", bench_incremental, render_incremental),
    Section("end_to_end", "End to end: ring → subscriber", bench_end_to_end, render_end_to_end),
    Section("capacity", "Capacity: concurrent real-time streams", bench_capacity, render_capacity),
    Section("onair", "On-air stages: loudness and alarms per stream",
            lambda ctx: bench_onair(ctx, block_s=BLOCK_S, repeats=1 if ctx.quick else 3,
                                    check=_check), render_onair),
    Section("daemon", "Memory and start-up", bench_daemon, render_daemon),
]


def stream_audio(workdir: Path) -> Path:
    """The clip as a WAV at its own rate and channels: the streams then cost what a device's
    would (resampling, framing) without an Ogg decoder per stream."""
    import soundfile as sf

    audio, rate = sf.read(CLIP, dtype="float32", always_2d=True)
    path = workdir / "clip.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    return path


def machine() -> dict:
    import onnxruntime

    return {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "load_at_start": os.getloadavg(),
            "model": MODEL, "incremental": DEFAULTS.incremental}


def measure(*, quick: bool) -> dict:
    """Run every section; a JSON-able dict keyed by section name, plus machine and checks."""
    started = time.monotonic()
    report = {"command": "streamclf bench" + (" --quick" if quick else ""), "quick": quick,
              "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="streamclf-bench-") as tmp:
        ctx = Context(quick=quick, workdir=Path(tmp), audio=stream_audio(Path(tmp)))
        for section in SECTIONS:
            t0 = time.monotonic()
            log.info("bench_section", section=section.name)
            ctx.results[section.name] = section.measure(ctx)
            ctx.results[section.name]["seconds"] = time.monotonic() - t0
    report["machine"]["load_at_end"] = os.getloadavg()
    report["seconds"] = time.monotonic() - started
    report |= ctx.results
    report["checks"] = {name: check for s in SECTIONS
                        for name, check in ctx.results[s.name].get("checks", {}).items()}
    return report


def render(report: dict) -> str:
    """The whole report as markdown: machine and load, each section, then the targets."""
    m = report["machine"]
    start, end = m["load_at_start"], m["load_at_end"]
    lines = [
        (f"Measured with `{report['command']}` (`--json` for machines, `--write docs/benchmarks.md` "
         f"writes this page) in {report['seconds']:.0f} s on {m['cpu']}, {m['cores']} cores, "
         f"Python {m['python']}, numpy {m['numpy']}, onnxruntime {m['onnxruntime']}; model "
         f"`{m['model']}`, the daemon with the default config (incremental inference "
         f"{'on' if m['incremental'] else 'off'}) on the CPU engine. Load average "
         f"(1/5/15 min) {start[0]:.1f}/{start[1]:.1f}/{start[2]:.1f} at the start and "
         f"{end[0]:.1f}/{end[1]:.1f}/{end[2]:.1f} at the end: other work on the machine slows "
         "every figure."),
        "",
    ]
    for i, section in enumerate(SECTIONS, 1):
        lines += [f"## {i}. {section.title}", "", section.render(report[section.name])]
    lines += ["## Targets (CPU engine)", "", "| target | measured | limit | |", "| --- | ---: | ---: | --- |"]
    for name, check in report["checks"].items():
        op = "≤" if check.get("at_most") else "≥"
        lines.append(f"| {name} | {check['value']:.3g} | {op} {check['target']:.3g} | "
                     + ("met" if check["ok"] else "**missed**") + " |")
    return "\n".join(lines) + "\n"


def _json_safe(value):
    """Non-finite floats become None (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


BEGIN_MARK = "<!-- streamclf bench: begin (generated) -->"
END_MARK = "<!-- streamclf bench: end -->"


def write_report(path: Path, markdown: str) -> None:
    """Write the measured part between the markers, keeping hand-written text around them (the
    reading of the numbers); a file without the markers is replaced whole."""
    generated = f"{BEGIN_MARK}\n{markdown}{END_MARK}\n"
    old = path.read_text() if path.is_file() else ""
    if BEGIN_MARK in old and END_MARK in old:
        head, rest = old.split(BEGIN_MARK, 1)
        generated = head + generated + rest.split(END_MARK, 1)[1].removeprefix("\n")
    else:
        generated = "# Benchmarks\n\n" + generated
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generated)


def run(args) -> int:
    """Entry point of `streamclf bench`."""
    report = measure(quick=args.quick)
    markdown = render(report)
    if args.write:
        write_report(args.write, markdown)
    if args.json:
        json.dump(_json_safe(report), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(markdown)
    return 0
