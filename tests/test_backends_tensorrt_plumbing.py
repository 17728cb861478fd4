"""The TensorRT engine's plumbing, run on this CPU against stand-in tensorrt/pycuda modules.

What is checked is streamclf's side: how plans are built (flags, profile, workspace), cached,
reused, rejected and rebuilt; that buffers are sliced per batch, contexts pushed and popped,
memory freed. TensorRT's own behaviour is tested on a GPU (test_backends_tensorrt.py).
"""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from backends_fake_gpu import _CONTEXT_STACK, make_pycuda_driver, make_tensorrt
from backends_helpers import FP32_TOLERANCE, card, music_windows
from structlog.testing import capture_logs

from streamclf.backends import list_plans, load_engine
from streamclf.backends.plans import PlanCache
from streamclf.backends.tensorrt import build_plans, plan_key, probe_gpu


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    builds: list[dict] = []
    cuda = make_pycuda_driver()
    package = types.ModuleType("pycuda")
    package.driver = cuda
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(builds=builds))
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return types.SimpleNamespace(builds=builds, cuda=cuda)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_engine(card(), "onnxruntime").infer(music_windows(32))


class TestBuild:
    """A plan is built once with the documented settings, then reused from the cache."""

    def test_auto_picks_tensorrt_and_builds_fp16_profile(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path
    ) -> None:
        with capture_logs() as logs:
            engine = load_engine(card(), "auto", plan_dir=tmp_path)
        assert (engine.name, engine.precision, engine.max_batch) == ("tensorrt", "fp16", 32)
        assert engine.device == "cuda:0 Fake GPU (sm_89)"
        [build] = fake_gpu.builds
        assert build["flags"] == ["FP16"]
        assert build["profiles"] == [
            {"name": "logmel", "min": [1, 187, 96], "opt": [1, 187, 96], "max": [32, 187, 96]}
        ]
        assert build["pools"] == {"WORKSPACE": 1 << 30}
        selected = next(e for e in logs if e["event"] == "engine_selected")
        assert selected["reason"] == "auto: TensorRT 10.99.0-fake on Fake GPU (sm_89)"
        engine.close()

    def test_fp32_on_request(self, fake_gpu: types.SimpleNamespace, tmp_path: Path) -> None:
        load_engine(card(), "tensorrt", precision="fp32", plan_dir=tmp_path).close()
        assert fake_gpu.builds[0]["flags"] == []

    def test_second_load_reuses_the_plan(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path
    ) -> None:
        load_engine(card(), "tensorrt", plan_dir=tmp_path).close()
        load_engine(card(), "tensorrt", plan_dir=tmp_path).close()
        assert len(fake_gpu.builds) == 1
        [record] = list_plans(tmp_path)
        assert record.problem == "" and record.key.tensorrt_version == "10.99.0-fake"

    def test_build_plans_reports_progress_and_skips_cached(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path
    ) -> None:
        lines: list[str] = []
        first = build_plans(
            [card()], cache_dir=tmp_path, precisions=["fp16", "fp32"], progress=lines.append
        )
        again = build_plans(
            [card()], cache_dir=tmp_path, precisions=["fp16", "fp32"], progress=lines.append
        )
        assert first == again and len(first) == 2 and all(p.exists() for p in first)
        assert len(fake_gpu.builds) == 2
        assert [line.split()[0] for line in lines] == [
            "building",
            "built",
            "building",
            "built",
            "cached",
            "cached",
        ]
        build_plans(
            [card()], cache_dir=tmp_path, precisions=["fp16"], force=True, progress=lines.append
        )
        assert len(fake_gpu.builds) == 3


class TestDamagedPlans:
    """A damaged plan, or one TensorRT refuses, is rebuilt, never run."""

    def test_truncated_plan_is_rebuilt(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path
    ) -> None:
        [plan] = build_plans([card()], cache_dir=tmp_path, progress=lambda _: None)
        plan.write_bytes(plan.read_bytes()[:20])
        engine = load_engine(card(), "tensorrt", plan_dir=tmp_path)
        assert len(fake_gpu.builds) == 2
        assert engine.infer(music_windows(1))["tags"].shape == (1, 50)
        engine.close()

    def test_plan_tensorrt_rejects_is_rebuilt(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path
    ) -> None:
        """Intact bytes under the right key that TensorRT cannot deserialize (e.g. a different
        build of the same version) are replaced."""
        key = plan_key(card().onnx_path, probe_gpu(), precision="fp16", max_batch=32)
        PlanCache(tmp_path).store(key, b"not a plan TensorRT can read")
        with capture_logs() as logs:
            engine = load_engine(card(), "tensorrt", plan_dir=tmp_path)
        assert any(e["event"] == "plan_rejected" for e in logs)
        assert len(fake_gpu.builds) == 1
        assert PlanCache(tmp_path).load(key).startswith(b"FAKEPLAN")
        engine.close()


class TestRun:
    """Batches of any size up to max_batch go through the fixed buffers and come back right."""

    def test_matches_onnxruntime_for_each_batch_size(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path, reference: dict[str, np.ndarray]
    ) -> None:
        engine = load_engine(card(), "tensorrt", plan_dir=tmp_path)
        windows = music_windows(32)
        for n in (32, 1, 5, 32):  # shrinking then growing: stale rows must not leak
            got = engine.infer(windows[:n])
            assert got["tags"].shape == (n, 50) and got["embedding"].shape == (n, 200)
            for name in ("tags", "embedding"):
                np.testing.assert_allclose(got[name], reference[name][:n], atol=FP32_TOLERANCE)
        assert _CONTEXT_STACK == []  # every push popped
        engine.close()

    def test_outputs_are_copies(self, fake_gpu: types.SimpleNamespace, tmp_path: Path) -> None:
        engine = load_engine(card(), "tensorrt", plan_dir=tmp_path)
        windows = music_windows(2)
        first = engine.infer(windows[:1])["tags"].copy()
        kept = engine.infer(windows[:1])["tags"]
        engine.infer(windows[1:2])
        np.testing.assert_array_equal(kept, first)
        engine.close()

    def test_loads_on_one_thread_runs_on_another(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path
    ) -> None:
        engine = load_engine(card(), "tensorrt", plan_dir=tmp_path)
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(engine.infer(music_windows(3))))
        worker.start()
        worker.join()
        assert result["tags"].shape == (3, 50)
        engine.close()

    def test_close_frees_memory_and_releases_the_context(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path
    ) -> None:
        engine = load_engine(card(), "tensorrt", plan_dir=tmp_path)
        engine.close()
        engine.close()  # idempotent
        expected = 32 * 187 * 96 * 4 + 32 * 50 * 4 + 32 * 200 * 4
        assert sum(fake_gpu.cuda.freed) == expected
        assert all(c.detached for c in fake_gpu.cuda.contexts)
