"""The engine part of `streamclf bench`: latency, throughput and arithmetic rate per engine.

Every engine present runs the same seeded inputs in the same process: per-window latency
p50/p99 at batch 1, throughput (windows/s) at batch 1, 8 and 32, and the achieved GFLOP/s
against this machine's fp32 matrix-multiply rate (numpy sgemm) measured in the same run.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np
import structlog

from streamclf.backends.base import model_path
from streamclf.backends.runner import load_engine
from streamclf.errors import StreamclfError
from streamclf.features.mel import N_MELS, WINDOW_FRAMES

log = structlog.get_logger(__name__)

BATCHES = (1, 8, 32)
SGEMM_SIZES = (512, 1024)
TARGET_ORT_VS_TORCH = 1.3  # onnxruntime at least this much faster than torch at batch 1
TARGET_SGEMM_SHARE = 0.40  # onnxruntime at batch 8 reaches this share of the sgemm rate


def _sgemm_call(n: int) -> Callable[[], None]:
    """One fp32 [n, n] @ [n, n] product into a preallocated output (2·n³ FLOPs per call)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    out = np.empty((n, n), np.float32)
    return lambda: np.matmul(a, b, out=out)


def sgemm_gflops(*, sizes: Sequence[int] = SGEMM_SIZES, min_time_s: float = 0.5) -> float:
    """Best fp32 matrix-multiply rate of numpy's BLAS over a few square sizes, in GFLOP/s.

    The best single call: the machine's attainable rate, least disturbed by other processes.
    """
    return max(
        2 * n**3 / min(time_calls(_sgemm_call(n), min_calls=3, min_time_s=min_time_s)) / 1e9
        for n in sizes
    )


def time_calls(call: Callable[[], object], *, min_calls: int, min_time_s: float) -> list[float]:
    """Seconds per `call()`, after one untimed call, for at least min_calls and min_time_s."""
    call()
    seconds = []
    deadline = time.perf_counter() + min_time_s
    while len(seconds) < min_calls or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def bench_engines(
    engines: Sequence, inputs: np.ndarray, *, quick: bool
) -> tuple[list[dict], np.ndarray]:
    """Per engine: latency percentiles at batch 1 and throughput at each of BATCHES; and the
    sgemm rates (GFLOP/s) of every sgemm call made alongside them.

    The engines and an sgemm block take turns in short blocks over several rounds, so that load
    from other processes falls on all of them alike instead of on whichever ran during a busy
    moment. The median sgemm rate shows how loaded the run was: close to the best rate on a quiet
    machine, far below it when other processes compete (BLAS threads suffer most from that, so
    the share is taken against the best rate, the conservative choice).
    """
    rounds, block_s = (2, 0.2) if quick else (5, 0.6)
    seconds = {id(e): {b: [] for b in BATCHES if b <= e.max_batch} for e in engines}
    sgemm, sgemm_seconds = _sgemm_call(SGEMM_SIZES[-1]), []
    for _ in range(rounds):
        sgemm_seconds.extend(time_calls(sgemm, min_calls=3, min_time_s=block_s))
        for engine in engines:
            for batch, samples in seconds[id(engine)].items():
                call = functools.partial(engine.infer, inputs[:batch])
                samples.extend(time_calls(call, min_calls=1, min_time_s=block_s))
    rows = []
    for engine in engines:
        per_batch = {b: np.asarray(s) for b, s in seconds[id(engine)].items()}
        rows.append(
            {
                "engine": engine.name,
                "device": engine.device,
                "precision": engine.precision,
                "latency_ms_p50": 1e3 * float(np.percentile(per_batch[1], 50)),
                "latency_ms_p99": 1e3 * float(np.percentile(per_batch[1], 99)),
                "calls_batch1": len(per_batch[1]),
                "windows_per_s": {b: b / float(np.median(s)) for b, s in per_batch.items()},
            }
        )
    return rows, 2 * SGEMM_SIZES[-1] ** 3 / np.asarray(sgemm_seconds) / 1e9


def available_kinds() -> list[str]:
    """onnxruntime always; torch where the train extra is installed; tensorrt where usable."""
    import importlib.util

    from streamclf.backends.trt_probe import probe_gpu

    kinds = ["onnxruntime"]
    if importlib.util.find_spec("torch") is not None:
        kinds.append("torch")
    if probe_gpu().usable:
        kinds.append("tensorrt")
    return kinds


def run_engine_bench(
    model: object, *, kinds: Sequence[str] | None = None, quick: bool = False
) -> dict:
    """Benchmark each engine kind on `model` (a ModelCard or ONNX path); a JSON-able dict."""
    path = model_path(model)
    inputs = (4.0 * np.random.default_rng(7).random((max(BATCHES), WINDOW_FRAMES, N_MELS))).astype(
        np.float32
    )
    try:
        from streamclf.bench.flops import count_flops

        flops = count_flops(path).total
    except ImportError:
        flops = None  # the onnx package is not installed: no FLOP count, everything else stands
    results: dict = {
        "model": path.stem,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)),
            "load_1min": os.getloadavg()[0],
            "sgemm_gflops": sgemm_gflops(min_time_s=0.3 if quick else 1.0),
        },
        "flops_per_window": flops,
    }
    engines = []
    for kind in kinds or available_kinds():
        try:
            engines.append(load_engine(path, kind))
        except StreamclfError as exc:
            log.warning("bench_engine_skipped", engine=kind, error=str(exc))
    try:
        outputs = [e.infer(inputs[: min(8, e.max_batch)]) for e in engines]
        results["engines"], alongside = bench_engines(engines, inputs, quick=quick)
        machine = results["machine"]
        machine["sgemm_gflops_alongside"] = float(np.median(alongside))
        # "at best" is the best of every sgemm call of the run, the ones alongside included
        machine["sgemm_gflops"] = max(machine["sgemm_gflops"], float(alongside.max()))
    finally:
        for engine in engines:
            engine.close()
    for row, out in zip(results["engines"], outputs, strict=True):
        n = len(out["tags"])
        row["max_abs_vs_first"] = max(float(np.abs(out[k] - outputs[0][k][:n]).max()) for k in out)
        if flops:
            row["gflops"] = {b: wps * flops / 1e9 for b, wps in row["windows_per_s"].items()}
    results["checks"] = check_targets(results)
    return results


def check_targets(results: dict) -> dict:
    """The issue's CPU targets, where the run measured what they need."""
    rows = {row["engine"]: row for row in results["engines"]}
    checks = {}
    ort, torch = rows.get("onnxruntime"), rows.get("torch")
    if ort and torch:
        speedup = torch["latency_ms_p50"] / ort["latency_ms_p50"]
        checks["onnxruntime_vs_torch_batch1"] = {
            "value": speedup,
            "target": TARGET_ORT_VS_TORCH,
            "ok": speedup >= TARGET_ORT_VS_TORCH,
        }
    if ort and "gflops" in ort and 8 in ort["gflops"]:
        share = ort["gflops"][8] / results["machine"]["sgemm_gflops"]
        checks["onnxruntime_sgemm_share_batch8"] = {
            "value": share,
            "target": TARGET_SGEMM_SHARE,
            "ok": share >= TARGET_SGEMM_SHARE,
        }
    return checks


def render_markdown(results: dict) -> str:
    """The results as a markdown section: machine line, one table row per engine, the checks."""
    machine = results["machine"]
    flops = results["flops_per_window"]
    lines = [
        f"Model `{results['model']}`, "
        + (f"{flops / 1e9:.2f} GFLOP per window; " if flops else "FLOPs not counted (no onnx); ")
        + f"{machine['cores']} cores, load {machine['load_1min']:.1f}, "
        f"numpy sgemm {machine['sgemm_gflops']:.0f} GFLOP/s at best (the % column's base), "
        f"{machine['sgemm_gflops_alongside']:.0f} GFLOP/s median alongside the engines.",
        "",
        "| engine | device | precision | p50 ms (b1) | p99 ms (b1) | "
        + " | ".join(f"win/s b{b}" for b in BATCHES)
        + " | GFLOP/s b8 | % sgemm b8 | max abs diff |",
        "| --- | --- | --- | ---: | ---: | "
        + " | ".join("---:" for _ in BATCHES)
        + " | ---: | ---: | ---: |",
    ]
    for row in results["engines"]:
        wps = row["windows_per_s"]
        gflops_b8 = row.get("gflops", {}).get(8)
        lines.append(
            f"| {row['engine']} | {row['device']} | {row['precision']} | "
            f"{row['latency_ms_p50']:.2f} | {row['latency_ms_p99']:.2f} | "
            + " | ".join(f"{wps[b]:.0f}" if b in wps else "–" for b in BATCHES)
            + (
                f" | {gflops_b8:.1f} | {100 * gflops_b8 / machine['sgemm_gflops']:.0f}%"
                if gflops_b8
                else " | – | –"
            )
            + f" | {row['max_abs_vs_first']:.1e} |"
        )
    if results["checks"]:
        lines.append("")
    for name, check in results["checks"].items():
        lines.append(
            f"- {name}: {check['value']:.2f} (target ≥ {check['target']:.2f}) "
            + ("met" if check["ok"] else "NOT met")
        )
    return "\n".join(lines) + "\n"
