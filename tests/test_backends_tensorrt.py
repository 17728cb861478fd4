"""TensorRT on a real GPU: parity with ONNX Runtime, FP16 without NaN, threads, the plan cache.

Runs where a GPU, TensorRT 10 and pycuda are present (scripts/gpu-check.sh); skips with the
probe's reason elsewhere. The CPU-side logic (keys, cache, selection, the plumbing against a
strict stand-in) is tested in test_backends_tensorrt_plumbing.py; pycuda's own rules in
test_backends_cuda.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from backends_helpers import FP16_TOLERANCE, FP32_TOLERANCE, card, music_windows
from structlog.testing import capture_logs

from streamclf.backends import list_plans, load_engine
from streamclf.backends.tensorrt import self_test_windows
from streamclf.backends.trt_build import build_plans
from streamclf.backends.trt_probe import probe_gpu

PROBE = probe_gpu()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not PROBE.usable, reason=f"no TensorRT GPU: {PROBE.problem}"),
]
MODELS = ("fused_musicnn", "MSD_musicnn")
TOLERANCE = {"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE}


@pytest.fixture(scope="module")
def references() -> dict[str, dict[str, np.ndarray]]:
    return {m: load_engine(card(m), "onnxruntime").infer(music_windows(32)) for m in MODELS}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("model", MODELS)
def test_agrees_with_onnxruntime(
    tmp_path: Path, references: dict, model: str, precision: str
) -> None:
    with capture_logs() as logs:
        engine = load_engine(card(model), "tensorrt", precision=precision, plan_dir=tmp_path)
    assert (engine.name, engine.precision) == ("tensorrt", precision)
    assert any(e["event"] == "engine_self_test_passed" for e in logs)
    windows, tolerance = music_windows(32), TOLERANCE[precision]
    for n in (1, 8, 32):
        got, expected = engine.infer(windows[:n]), references[model]
        np.testing.assert_allclose(got["tags"], expected["tags"][:n], atol=tolerance)
        scale = max(1.0, float(np.abs(expected["embedding"]).max()))
        np.testing.assert_allclose(
            got["embedding"], expected["embedding"][:n], atol=tolerance * scale
        )
    engine.close()


def test_fp16_fused_model_gives_no_nan(tmp_path: Path) -> None:
    """The calibration's log(1 - p) in FP32: finite probabilities even for extreme input."""
    engine = load_engine(card("fused_musicnn"), "tensorrt", precision="fp16", plan_dir=tmp_path)
    extreme = np.stack([np.full((187, 96), level, np.float32) for level in (0.0, 2.0, 4.0, 8.0)])
    for windows in (music_windows(32), self_test_windows(), extreme):
        tags = engine.infer(windows)["tags"]
        assert np.isfinite(tags).all()
        np.testing.assert_allclose(tags.sum(axis=1), 1.0, atol=1e-3)
    engine.close()


def test_loads_on_one_thread_runs_on_another_closes_on_a_third(tmp_path: Path) -> None:
    engine = load_engine(card("fused_musicnn"), "tensorrt", plan_dir=tmp_path)
    result: dict = {}
    for target in (lambda: result.update(engine.infer(music_windows(3))), engine.close):
        worker = threading.Thread(target=target)
        worker.start()
        worker.join()
    assert result["tags"].shape == (3, 14)


def test_plan_is_cached_and_reused(tmp_path: Path) -> None:
    [plan] = build_plans([card()], cache_dir=tmp_path, precisions=["fp16"], progress=lambda _: None)
    built = plan.stat().st_mtime_ns
    [record] = list_plans(tmp_path)
    assert record.problem == "" and record.key.gpu_name == PROBE.gpu_name
    engine = load_engine(card(), "tensorrt", precision="fp16", plan_dir=tmp_path)
    assert plan.stat().st_mtime_ns == built  # loaded, not rebuilt
    engine.close()


def test_corrupt_plan_is_rebuilt(tmp_path: Path) -> None:
    [plan] = build_plans([card()], cache_dir=tmp_path, precisions=["fp16"], progress=lambda _: None)
    plan.write_bytes(plan.read_bytes()[:1000])
    engine = load_engine(card(), "tensorrt", precision="fp16", plan_dir=tmp_path)
    assert engine.infer(music_windows(1))["tags"].shape == (1, 50)
    assert [r.problem for r in list_plans(tmp_path)] == [""]
    engine.close()
