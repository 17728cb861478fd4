"""The TensorRT engine's plumbing, run on this CPU against strict stand-in tensorrt/pycuda modules.

What is checked is streamclf's side: how plans are built (flags, profile, workspace, the FP32
head), cached, reused, rejected and rebuilt; that buffers are sized from the context and sliced
per batch; that every CUDA call runs with the context current on its own thread; that release
frees everything inside the context; and that every failure to come up becomes an EngineError
that `auto` falls back from. TensorRT's own behaviour is tested on a GPU
(test_backends_tensorrt.py), pycuda's against the stand-in in test_backends_cuda.py.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from backends_fake_gpu import make_pycuda_driver, make_tensorrt, onnx_layers
from backends_helpers import FP32_TOLERANCE, card, music_windows
from reliability_helpers import CLIP
from structlog.testing import capture_logs

from streamclf.backends import list_plans, load_engine
from streamclf.backends.plans import PlanCache, plan_key
from streamclf.backends.trt_build import build_plans, fp32_head
from streamclf.backends.trt_probe import probe_gpu
from streamclf.config import load_config
from streamclf.errors import EngineError
from streamclf.pipeline import Pipeline
from streamclf.sdnotify import Notifier
from streamclf.testing.daemon import NotifySocket, wait_for, write_config

MODELS = ("MSD_musicnn", "fused_musicnn")
PARITY_BATCH = 8  # max_batch of the parity tests: ONNX Runtime on 2 cores is their cost


@pytest.fixture
def make_fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Callable[..., types.SimpleNamespace]:
    """Installs a fake `tensorrt` (with the given knobs) and `pycuda.driver`."""

    def install(**knobs) -> types.SimpleNamespace:
        builds: list[dict] = []
        cuda = make_pycuda_driver()
        package = types.ModuleType("pycuda")
        package.driver = cuda
        trt = make_tensorrt(builds=builds, cuda=cuda, **knobs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "pycuda", package)
        monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
        return types.SimpleNamespace(builds=builds, cuda=cuda, trt=trt)

    return install


@pytest.fixture
def fake_gpu(make_fake_gpu) -> types.SimpleNamespace:
    return make_fake_gpu()


@pytest.fixture(scope="module")
def references() -> dict[str, dict[str, np.ndarray]]:
    windows = music_windows(PARITY_BATCH)
    return {m: load_engine(card(m), "onnxruntime").infer(windows) for m in MODELS}


def assert_all_released(cuda: types.ModuleType) -> None:
    """Nothing left behind: no skipped frees, the primary context given back."""
    assert cuda.leaked == [] and cuda.memory == {} and cuda.primary_retains == 0


def window_bytes(n: int) -> int:
    return n * 187 * 96 * 4


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
        assert build["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
        assert build["profiles"] == [
            {"name": "logmel", "min": [1, 187, 96], "opt": [1, 187, 96], "max": [32, 187, 96]}
        ]
        assert build["pools"] == {"WORKSPACE": 1 << 30}
        selected = next(e for e in logs if e["event"] == "engine_selected")
        assert selected["reason"] == "auto: TensorRT 10.99.0-fake on Fake GPU (sm_89)"
        assert any(e["event"] == "engine_self_test_passed" for e in logs)
        engine.close()

    def test_fp32_on_request(self, fake_gpu: types.SimpleNamespace, tmp_path: Path) -> None:
        load_engine(card(), "tensorrt", precision="fp32", plan_dir=tmp_path).close()
        assert fake_gpu.builds[0]["flags"] == []
        assert fake_gpu.builds[0]["fp32_layers"] == []

    @pytest.mark.parametrize("model", MODELS)
    def test_fp16_plan_holds_the_head_in_fp32(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path, model: str
    ) -> None:
        """Everything after the last matrix product (sigmoid; the fused model's log(1 - p),
        which is -inf in FP16 once p rounds to 1, and its softmax) is FP32; no convolution is."""
        load_engine(card(model), "tensorrt", precision="fp16", plan_dir=tmp_path).close()
        layers = {layer["name"]: layer for layer in onnx_layers(str(card(model).onnx_path))}
        held = fake_gpu.builds[0]["fp32_layers"]
        heavy = ("CONVOLUTION", "MATRIX_MULTIPLY")
        assert held and all(layers[n]["type"] not in heavy for n in held)
        tail_ops = {layers[n]["op"] for n in held}
        assert "Sigmoid" in tail_ops
        if model == "fused_musicnn":
            assert {"Log", "Softmax"} <= tail_ops
            logs = [n for n, layer in layers.items() if layer["op"] in ("Log", "Softmax")]
            assert set(logs) <= set(held)

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


def test_fp32_head_is_the_tail_after_the_last_matrix_product() -> None:
    """Pure: a→conv→b→matmul→c→sigmoid→tags, with a side branch into the matmul."""
    layers = [
        ("CONVOLUTION", ["x"], ["a"]),
        ("ACTIVATION", ["a"], ["b"]),
        ("MATRIX_MULTIPLY", ["b", "w"], ["c"]),
        ("ELEMENTWISE", ["c", "bias"], ["d"]),
        ("ACTIVATION", ["d"], ["tags"]),
        ("REDUCE", ["b"], ["embedding"]),
    ]
    assert fp32_head(layers, output="tags") == {3, 4}
    assert fp32_head(layers, output="embedding") == {5}


class TestUnsupportedTensorRT:
    """TensorRT 11 has no FP16 builder flag: the probe refuses it in one line, `auto` runs ONNX
    Runtime, an explicit `tensorrt` is an EngineError; nothing is built."""

    @pytest.fixture
    def tensorrt_11(self, make_fake_gpu) -> types.SimpleNamespace:
        return make_fake_gpu(version="11.4.0.106", fp16_flag=False)

    def test_auto_falls_back(self, tensorrt_11: types.SimpleNamespace, tmp_path: Path) -> None:
        engine = load_engine(card(), "auto", plan_dir=tmp_path)
        assert engine.name == "onnxruntime"
        assert "TensorRT 11.4.0.106 is not supported" in engine.info.reason
        assert "\n" not in engine.info.reason and tensorrt_11.builds == []

    def test_explicit_kind_raises(self, tensorrt_11: types.SimpleNamespace, tmp_path: Path) -> None:
        with pytest.raises(EngineError, match=r"needs TensorRT 10: pip install 'tensorrt>=10,<11'"):
            load_engine(card(), "tensorrt", plan_dir=tmp_path)


class TestBringUpFailures:
    """Whatever fails while the engine comes up (pycuda, TensorRT, a changed API, a bad plan),
    `auto` falls back to ONNX Runtime with the reason, and nothing is left allocated."""

    def test_out_of_memory_at_allocation(self, make_fake_gpu, tmp_path: Path) -> None:
        gpu = make_fake_gpu()
        gpu.cuda.fail_allocation = 2  # the input buffer is allocated, the first output is not
        engine = load_engine(card(), "auto", plan_dir=tmp_path)
        assert engine.name == "onnxruntime"
        assert "MemoryError: cuMemAlloc failed: out of memory" in engine.info.reason
        assert_all_released(gpu.cuda)
        assert sum(gpu.cuda.freed) == window_bytes(32) and len(gpu.cuda.host_freed) == 2

    def test_cuda_initialisation_failure_in_the_runtime(
        self, make_fake_gpu, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        gpu = make_fake_gpu()

        def runtime(logger):
            raise RuntimeError("CUDA initialization failure with error: 35")

        monkeypatch.setattr(gpu.trt, "Runtime", runtime)
        engine = load_engine(card(), "auto", plan_dir=tmp_path)
        assert engine.name == "onnxruntime"
        assert "RuntimeError: CUDA initialization failure" in engine.info.reason
        assert_all_released(gpu.cuda)

    def test_api_change(
        self, make_fake_gpu, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        gpu = make_fake_gpu()
        monkeypatch.delattr(gpu.trt, "TensorIOMode")
        engine = load_engine(card(), "auto", plan_dir=tmp_path)
        assert engine.name == "onnxruntime" and "AttributeError" in engine.info.reason
        with pytest.raises(EngineError, match="TensorRT could not start"):
            load_engine(card(), "tensorrt", plan_dir=tmp_path)
        assert_all_released(gpu.cuda)

    def test_non_finite_outputs_fail_the_self_test(self, make_fake_gpu, tmp_path: Path) -> None:
        gpu = make_fake_gpu(nan_tags=True)
        engine = load_engine(card("fused_musicnn"), "auto", plan_dir=tmp_path)
        assert engine.name == "onnxruntime"
        assert "failed its self-test: non-finite 'tags'" in engine.info.reason
        assert_all_released(gpu.cuda)


class TestShapes:
    """Buffers are sized from the execution context with the full batch set; a refused shape
    or profile is an error, never a plan that runs with unchecked sizes."""

    @pytest.mark.parametrize("model", MODELS)
    def test_dynamic_output_dims(
        self, make_fake_gpu, tmp_path: Path, references: dict, model: str
    ) -> None:
        make_fake_gpu(dynamic_output_dims=True)
        engine = load_engine(card(model), "tensorrt", max_batch=PARITY_BATCH, plan_dir=tmp_path)
        got = engine.infer(music_windows(5))
        for name in ("tags", "embedding"):
            np.testing.assert_allclose(got[name], references[model][name][:5], atol=FP32_TOLERANCE)
        engine.close()

    def test_refused_profile(self, make_fake_gpu, tmp_path: Path) -> None:
        gpu = make_fake_gpu(refuse_profile=True)
        with pytest.raises(EngineError, match=r"refused the batch profile 1\.\.32"):
            load_engine(card(), "tensorrt", plan_dir=tmp_path)
        assert gpu.builds == [] and list_plans(tmp_path) == []

    def test_refused_input_shape(self, make_fake_gpu, tmp_path: Path) -> None:
        gpu = make_fake_gpu(refuse_batch_above=8)
        with pytest.raises(EngineError, match=r"refused input shape \(32, 187, 96\)"):
            load_engine(card(), "tensorrt", plan_dir=tmp_path)
        assert_all_released(gpu.cuda)


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

    @pytest.mark.parametrize("model", MODELS)
    def test_matches_onnxruntime_for_each_batch_size(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path, references: dict, model: str
    ) -> None:
        engine = load_engine(card(model), "tensorrt", max_batch=PARITY_BATCH, plan_dir=tmp_path)
        windows = music_windows(PARITY_BATCH)
        for n in (PARITY_BATCH, 1, 5, PARITY_BATCH):  # shrinking then growing: no stale rows
            got = engine.infer(windows[:n])
            assert set(got) == {"tags", "embedding"}
            for name in ("tags", "embedding"):
                expected = references[model][name][:n]
                np.testing.assert_allclose(got[name], expected, atol=FP32_TOLERANCE)
        assert fake_gpu.cuda.Context.get_current() is None  # every push popped
        engine.close()

    def test_outputs_are_copies(self, fake_gpu: types.SimpleNamespace, tmp_path: Path) -> None:
        engine = load_engine(card(), "tensorrt", plan_dir=tmp_path)
        windows = music_windows(2)
        first = engine.infer(windows[:1])["tags"].copy()
        kept = engine.infer(windows[:1])["tags"]
        engine.infer(windows[1:2])
        np.testing.assert_array_equal(kept, first)
        engine.close()


class TestThreadsAndRelease:
    """Loaded on one thread, run on a second, closed on a third: each call has the context
    current on its own thread, and the close gives back every buffer, the stream and the
    context itself."""

    @pytest.mark.parametrize("model", MODELS)
    def test_load_run_close_on_three_threads(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path, model: str
    ) -> None:
        engine = load_engine(card(model), "tensorrt", plan_dir=tmp_path)
        result: dict = {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pycuda's out-of-thread warning fails the test
            for target in (lambda: result.update(engine.infer(music_windows(3))), engine.close):
                worker = threading.Thread(target=target)
                worker.start()
                worker.join()
        assert result["tags"].shape[0] == 3
        assert_all_released(fake_gpu.cuda)
        n_outputs = 4 if model == "fused_musicnn" else 2
        assert len(fake_gpu.cuda.host_freed) == 1 + n_outputs
        assert fake_gpu.cuda.streams_destroyed == 1

    def test_close_frees_exactly_what_was_allocated(
        self, fake_gpu: types.SimpleNamespace, tmp_path: Path
    ) -> None:
        engine = load_engine(card(), "tensorrt", plan_dir=tmp_path)
        engine.close()
        engine.close()  # idempotent
        assert sum(fake_gpu.cuda.freed) == window_bytes(32) + 32 * 50 * 4 + 32 * 200 * 4
        assert sum(fake_gpu.cuda.host_freed) == sum(fake_gpu.cuda.freed)
        assert_all_released(fake_gpu.cuda)


def test_slow_plan_build_keeps_extending_the_start_timeout(make_fake_gpu, tmp_path: Path) -> None:
    """A build longer than the start timeout: systemd is asked for more time throughout."""
    make_fake_gpu(build_s=0.8)
    with NotifySocket(tmp_path / "notify") as recorder:
        notifier = Notifier({"NOTIFY_SOCKET": recorder.path})
        started = time.monotonic()
        with notifier.extended_start(step_s=0.1):
            engine = load_engine(card(), "tensorrt", plan_dir=tmp_path / "plans")
        ended = time.monotonic()
        engine.close()
        time.sleep(0.1)
    received = list(zip(recorder.arrived, recorder.datagrams, strict=True))
    extends = [t for t, msg in received if msg == "EXTEND_TIMEOUT_USEC=300000"]
    assert extends and extends[0] - started < 0.05
    assert len(extends) >= 7 and all(b - a < 0.25 for a, b in itertools.pairwise(extends))
    assert ended - extends[-1] < 0.25
    assert len(extends) == len(received)  # nothing after the block


def test_stop_during_a_slow_inference_closes_the_engine_after_the_call(
    make_fake_gpu, tmp_path: Path
) -> None:
    """Pipeline.stop() while the engine worker is inside a TensorRT call that outlasts the
    join timeout: the engine is closed by the worker once the call returns, never under it."""
    gpu = make_fake_gpu()
    stream = {"id": "a", "source": "file", "path": str(CLIP), "loop": True, "realtime": False}
    engine = {"kind": "tensorrt", "model": "MSD_musicnn", "plan_cache_dir": str(tmp_path / "p")}
    cfg = write_config(tmp_path, streams=[stream], engine=engine)
    pipeline = Pipeline(load_config(cfg.path), publish=False)
    pipeline.start()
    gpu.trt.execute_s = 1.0
    with capture_logs() as logs:
        try:
            assert wait_for(lambda: bool(gpu.cuda.running), timeout_s=30)
        finally:
            pipeline.stop(timeout_s=0.1)
        assert gpu.cuda.running and gpu.cuda.primary_retains == 1  # still in the call, not closed
        assert wait_for(lambda: gpu.cuda.primary_retains == 0, timeout_s=10)
    events = [e["event"] for e in logs]
    assert events.index("engine_busy_at_stop") < events.index("engine_closed_after_stop")
    assert gpu.cuda.freed_while_running == []
    assert_all_released(gpu.cuda)
