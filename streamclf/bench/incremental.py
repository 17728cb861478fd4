"""The incremental part of `streamclf bench`: cost per window and capacity, incremental vs full.

Both runners get the same ticks in the same run, alternating tick by tick so that both see the
same load: each tick hands the engine one new window per stream (S streams at hop H, the
bundled clip at different offsets), as the daemon's engine worker does. Cost per window is the
median tick time / S; capacity is how many such streams one engine keeps up with in real time
(H / cost per window). The ideal speed-up comes from the graphs' FLOPs (`streamclf.bench.flops`).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import structlog

from streamclf.audio.files import BUNDLED_CLIP as CLIP
from streamclf.backends.incremental import IncrementalRunner
from streamclf.backends.runner import FullWindowRunner, WindowRunner, load_engine
from streamclf.features.framer import Window, load_mono_16k
from streamclf.features.mel import (
    HOP_LENGTH,
    SAMPLE_RATE_HZ,
    WINDOW_FRAMES,
    frames_for_seconds,
    logmel,
)
from streamclf.models.card import DEFAULT_MODEL, load_model_card

log = structlog.get_logger(__name__)

HOPS_S = (0.5, 1.0, 1.5)
BENCH_STREAMS = 4
STREAM_OFFSET_FRAMES = 37  # streams start this far apart in the clip, so no two windows are equal


def stream_id(k: int) -> str:
    return f"s{k}"


def stream_ticks(
    source: np.ndarray, *, hop_frames: int, streams: int, ticks: int
) -> list[list[tuple[str, Window]]]:
    """ticks × [(stream id, window)]: each tick one new window of every stream.

    source [F, 96] log-mel is tiled as needed; stream k starts at frame k · STREAM_OFFSET_FRAMES.
    """
    needed = (streams - 1) * STREAM_OFFSET_FRAMES + (ticks - 1) * hop_frames + WINDOW_FRAMES
    tiled = np.tile(source, (math.ceil(needed / source.shape[0]), 1))
    out = []
    for t in range(ticks):
        tick = []
        for k in range(streams):
            start = k * STREAM_OFFSET_FRAMES + t * hop_frames
            frames = np.array(tiled[start : start + WINDOW_FRAMES])
            window = Window(t, start, frames, start * HOP_LENGTH / SAMPLE_RATE_HZ,
                            (start + WINDOW_FRAMES) * HOP_LENGTH / SAMPLE_RATE_HZ, 0.0, math.nan)
            tick.append((stream_id(k), window))
        out.append(tick)
    return out


def time_alternating(runners: dict[str, WindowRunner],
                     ticks: list) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Seconds per tick for each runner, wall and this process's CPU (every thread: ONNX
    Runtime's pool too), the runners alternating on every tick; tick 0 untimed (it fills the
    incremental rings)."""
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for i, tick in enumerate(ticks):
        for name, runner in runners.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            runner.run(tick)
            if i:
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)
    return ({name: np.asarray(s) for name, s in wall.items()},
            {name: np.asarray(s) for name, s in cpu.items()})


def ideal_speedups(card, split, hops_frames: list[int]) -> dict[int, float]:
    """Full-window FLOPs / (window-graph FLOPs + hop × per-frame FLOPs), per hop (needs onnx)."""
    from streamclf.bench.flops import count_flops

    full = count_flops(card.onnx_path).total
    window = count_flops(split.window_path).total
    per_frame = (full - window) / split.core_frames  # the full model's timbral work on core frames
    return {h: full / (window + min(h, split.core_frames) * per_frame) for h in hops_frames}


def bench_incremental(
    model: str = DEFAULT_MODEL,
    *,
    hops_s: tuple[float, ...] = HOPS_S,
    streams: int = BENCH_STREAMS,
    quick: bool = False,
    threads: int | None = None,
) -> dict:
    """Incremental vs full-window inference on the CPU engine at each hop; a JSON-ready dict."""
    card = load_model_card(model)
    incremental = IncrementalRunner(card, max_batch=streams, threads=threads)
    full = FullWindowRunner(load_engine(card, "onnxruntime", max_batch=streams, threads=threads))
    runners: dict[str, WindowRunner] = {"incremental": incremental, "full": full}
    for runner in runners.values():
        runner.warmup()
    source = logmel(load_mono_16k(CLIP))
    hops_frames = [frames_for_seconds(h) for h in hops_s]
    try:
        ideal = ideal_speedups(card, incremental.split, hops_frames)
    except ImportError:  # onnx is a dev/train extra
        ideal = {}
    n_ticks = 8 if quick else 30
    rows = []
    for hop_s, hop_frames in zip(hops_s, hops_frames, strict=True):
        for k in range(streams):  # each hop starts from empty rings, filled by the untimed tick 0
            incremental.reset(stream_id(k))
        before = incremental.counters.frames_computed, incremental.counters.windows
        ticks = stream_ticks(source, hop_frames=hop_frames, streams=streams, ticks=n_ticks + 1)
        seconds, cpu_seconds = time_alternating(runners, ticks)
        computed = (incremental.counters.frames_computed - before[0]
                    - incremental.split.core_frames * streams)
        windows = incremental.counters.windows - before[1] - streams
        ms = {name: 1e3 * float(np.median(s)) / streams for name, s in seconds.items()}
        rows.append({
            "hop_s": hop_s,
            "hop_frames": hop_frames,
            "full_ms_per_window": ms["full"],
            "incremental_ms_per_window": ms["incremental"],
            # CPU of all the bench's threads: what the runner costs the machine per window
            "incremental_cpu_ms_per_window":
                1e3 * float(np.median(cpu_seconds["incremental"])) / streams,
            "speedup": ms["full"] / ms["incremental"],
            "ideal_speedup": ideal.get(hop_frames),
            "full_capacity_streams": hop_frames * HOP_LENGTH / SAMPLE_RATE_HZ / ms["full"] * 1e3,
            "incremental_capacity_streams":
                hop_frames * HOP_LENGTH / SAMPLE_RATE_HZ / ms["incremental"] * 1e3,
            "frames_computed_per_window": computed / windows,
        })
        log.info("bench_incremental", **rows[-1])
    for runner in runners.values():
        runner.close()
    per_frame_ms, per_window_ms = (np.polyfit([r["hop_frames"] for r in rows],
                                              [r["incremental_ms_per_window"] for r in rows], 1)
                                   if len(rows) > 1 else (math.nan, math.nan))
    return {
        "model": card.name,
        "engine": incremental.info.device,
        "streams": streams,
        "ticks": n_ticks,
        "load_average_1min": os.getloadavg()[0],
        "hops": rows,
        # incremental cost ≈ per_window_ms + hop_frames · per_frame_ms (least squares over hops)
        "fit": {"per_window_ms": float(per_window_ms), "per_frame_ms": float(per_frame_ms)},
    }


def format_incremental(result: dict) -> str:
    """The result as a markdown table for the bench report and docs/incremental.md."""
    lines = [
        (f"Incremental vs full-window inference, {result['model']} on onnxruntime "
         f"{result['engine']}, {result['streams']} streams per batch, median of {result['ticks']} "
         f"ticks (1-min load average {result['load_average_1min']:.1f})"),
        "",
        ("| hop | full ms/window | incremental ms/window | incremental CPU ms/window "
         "| speed-up (ideal, FLOPs) | capacity full → incremental (streams) "
         "| frames computed per window |"),
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["hops"]:
        ideal = f"{r['ideal_speedup']:.2f}×" if r["ideal_speedup"] else "n/a"
        lines.append(
            f"| {r['hop_s']:g} s ({r['hop_frames']} frames) | {r['full_ms_per_window']:.1f} "
            f"| {r['incremental_ms_per_window']:.1f} | {r['incremental_cpu_ms_per_window']:.1f} "
            f"| {r['speedup']:.2f}× ({ideal}) "
            f"| {r['full_capacity_streams']:.0f} → {r['incremental_capacity_streams']:.0f} "
            f"| {r['frames_computed_per_window']:.0f} |"
        )
    fit = result["fit"]
    lines += ["", (f"Incremental cost ≈ {fit['per_window_ms']:.1f} ms per window + "
                   f"{fit['per_frame_ms']:.3f} ms per new frame (fit over the hops).")]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_incremental(bench_incremental()))
