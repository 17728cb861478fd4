"""`streamclf bench`, sections 2 and 3: the engines on whole windows, and incremental inference.

Both run in this process on the default model (`streamclf.bench.engines`,
`streamclf.bench.incremental`); the floor is the model's FLOPs over the sgemm rate measured in
the same run.
"""

from __future__ import annotations

import os

import numpy as np

from streamclf.audio.files import BUNDLED_CLIP as CLIP
from streamclf.backends.incremental import IncrementalRunner
from streamclf.backends.runner import load_runner
from streamclf.bench.common import DEFAULTS, MAX_BATCH, MODEL, Context
from streamclf.bench.engines import render_markdown, run_engine_bench
from streamclf.bench.incremental import (
    bench_incremental,
    format_incremental,
    stream_ticks,
    time_alternating,
)
from streamclf.errors import StreamclfError
from streamclf.features.framer import load_mono_16k
from streamclf.features.mel import frames_for_seconds, logmel
from streamclf.models.card import load_model_card

TORCH_MODEL = "MSD_musicnn"  # the torch engine rebuilds only the original models


def bench_engine_section(ctx: Context) -> dict:
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


def render_engine_section(r: dict) -> str:
    text = render_markdown(r)
    if "torch_model" in r:
        text += ("\nThe torch engine builds only the four original models, so onnxruntime "
                 "and torch side by side on one of them:\n\n"
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


def _time_daemon_runner(*, hop_s: float, streams: int,
                        ticks: int) -> tuple[str, np.ndarray, np.ndarray]:
    """The runner the daemon loads for its defaults at `hop_s` (the incremental one where the
    model allows), alone in this process, on `ticks` ticks of one new window per stream:
    (its kind, wall seconds per tick, CPU seconds per tick)."""
    hop_frames = frames_for_seconds(hop_s)
    runner = load_runner(load_model_card(MODEL), "onnxruntime", incremental=DEFAULTS.incremental,
                         hop_frames=hop_frames, max_batch=MAX_BATCH)
    try:
        runner.warmup()
        timed = stream_ticks(logmel(load_mono_16k(CLIP)), hop_frames=hop_frames,
                             streams=streams, ticks=ticks + 1)
        wall, cpu = time_alternating({"runner": runner}, timed)
    finally:
        runner.close()
    kind = "incremental" if isinstance(runner, IncrementalRunner) else "full"
    return kind, wall["runner"], cpu["runner"]


def runner_latency_ms(*, hop_s: float, windows: int) -> dict:
    """ms per call for one stream's consecutive windows at batch 1, as the daemon's engine
    worker calls its runner for a single stream."""
    kind, wall, _ = _time_daemon_runner(hop_s=hop_s, streams=1, ticks=windows)
    ms = 1e3 * wall
    return {"runner": kind, "windows": int(ms.size), "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99))}


def runner_bound(*, hop_s: float, streams: int, ticks: int) -> dict:
    """How many real-time streams at `hop_s` the daemon's runner alone keeps up with: `streams`
    windows a call, median tick; measured next to the capacity trials, so that both see the
    machine at the same speed."""
    kind, wall, cpu = _time_daemon_runner(hop_s=hop_s, streams=streams, ticks=ticks)
    ms_per_window = 1e3 * float(np.median(wall)) / streams
    return {"runner": kind, "streams": 1e3 * hop_s / ms_per_window,
            "ms_per_window": ms_per_window,
            "cpu_ms_per_window": 1e3 * float(np.median(cpu)) / streams,
            "load_1min": os.getloadavg()[0]}


def bench_incremental_section(ctx: Context) -> dict:
    return bench_incremental(MODEL, quick=ctx.quick)


def render_incremental_section(r: dict) -> str:
    return format_incremental(r) + "\n"
