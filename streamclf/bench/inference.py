"""`streamclf bench`, sections 2 and 3: the engines on whole windows, and incremental inference.

Both run in this process on the default model (`streamclf.bench.engines`,
`streamclf.bench.incremental`); the floor is the model's FLOPs over the sgemm rate measured in
the same run.
"""

from __future__ import annotations

from streamclf.bench.common import MODEL, Context
from streamclf.bench.engines import render_markdown, run_engine_bench
from streamclf.bench.incremental import bench_incremental, format_incremental
from streamclf.errors import StreamclfError
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


def bench_incremental_section(ctx: Context) -> dict:
    return bench_incremental(MODEL, quick=ctx.quick)


def render_incremental_section(r: dict) -> str:
    return format_incremental(r) + "\n"
