"""TensorRT on a real GPU: parity with ONNX Runtime, the plan cache, damaged plans.

Runs where a GPU, tensorrt and pycuda are present (scripts/gpu-check.sh); skips with the
probe's reason elsewhere. The CPU-side logic (keys, cache, selection) is tested elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from backends_helpers import FP16_TOLERANCE, FP32_TOLERANCE, card, music_windows

from streamclf.backends import list_plans, load_engine
from streamclf.backends.tensorrt import build_plans, probe_gpu

PROBE = probe_gpu()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not PROBE.usable, reason=f"no TensorRT GPU: {PROBE.problem}"),
]


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_engine(card(), "onnxruntime").infer(music_windows(32))


@pytest.mark.parametrize(
    ("precision", "tolerance"), [("fp32", FP32_TOLERANCE), ("fp16", FP16_TOLERANCE)]
)
def test_agrees_with_onnxruntime(
    tmp_path: Path, reference: dict[str, np.ndarray], precision: str, tolerance: float
) -> None:
    engine = load_engine(card(), "tensorrt", precision=precision, plan_dir=tmp_path)
    assert (engine.name, engine.precision) == ("tensorrt", precision)
    windows = music_windows(32)
    for n in (1, 8, 32):
        got = engine.infer(windows[:n])
        np.testing.assert_allclose(got["tags"], reference["tags"][:n], atol=tolerance)
        scale = max(1.0, float(np.abs(reference["embedding"]).max()))
        np.testing.assert_allclose(
            got["embedding"], reference["embedding"][:n], atol=tolerance * scale
        )
    engine.close()


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
