"""Engine selection: 'auto' decides once, logs the choice and why, and falls back safely."""

from __future__ import annotations

import pytest
from backends_helpers import card, music_windows
from structlog.testing import capture_logs

from streamclf.backends import load_engine, trt_probe
from streamclf.backends.base import GpuProbe
from streamclf.backends.plans import plan_key
from streamclf.backends.runner import FullWindowRunner, choose_kind, load_runner
from streamclf.errors import EngineError

GPU = GpuProbe(tensorrt_version="10.3.0", gpu_name="NVIDIA L4", compute_capability="8.9")
NO_GPU = GpuProbe(problem="tensorrt is not installed")


class TestChooseKind:
    """The pure decision: tensorrt only where usable, onnxruntime otherwise, explicit wins."""

    def test_auto_with_gpu_picks_tensorrt(self) -> None:
        kind, reason = choose_kind("auto", GPU)
        assert kind == "tensorrt"
        assert "TensorRT 10.3.0 on NVIDIA L4 (sm_89)" in reason

    def test_auto_without_gpu_picks_onnxruntime(self) -> None:
        assert choose_kind("auto", NO_GPU) == (
            "onnxruntime",
            "auto: no usable GPU (tensorrt is not installed)",
        )

    @pytest.mark.parametrize("kind", ["onnxruntime", "torch"])
    def test_explicit_cpu_kinds_ignore_the_gpu(self, kind: str) -> None:
        assert choose_kind(kind, GPU) == (kind, "requested")

    def test_explicit_tensorrt_without_gpu_is_an_error(self) -> None:
        with pytest.raises(
            EngineError, match="tensorrt engine requested but unavailable: tensorrt is not"
        ):
            choose_kind("tensorrt", NO_GPU)

    def test_unknown_kind(self) -> None:
        with pytest.raises(EngineError, match="unknown engine kind 'openvino'"):
            choose_kind("openvino", NO_GPU)


class TestLoadEngineHere:
    """On this machine (no GPU, no tensorrt) 'auto' loads onnxruntime and logs why."""

    def test_probe_reports_why_not_without_raising(self) -> None:
        probe = trt_probe.probe_gpu()
        assert not probe.usable and probe.problem

    def test_auto_logs_choice_and_reason(self) -> None:
        with capture_logs() as logs:
            engine = load_engine(card(), "auto")
        assert engine.name == "onnxruntime"
        selected = [e for e in logs if e["event"] == "engine_selected"]
        assert len(selected) == 1
        assert selected[0]["engine"] == "onnxruntime"
        assert selected[0]["reason"].startswith("auto: no usable GPU (")
        assert engine.info.reason == selected[0]["reason"]

    def test_explicit_tensorrt_fails_with_one_line(self) -> None:
        with pytest.raises(EngineError, match="tensorrt engine requested but unavailable") as err:
            load_engine(card(), "tensorrt")
        assert "\n" not in str(err.value)

    def test_auto_falls_back_when_tensorrt_cannot_load(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A GPU that is detected but whose engine cannot be made (here: no tensorrt module)
        ends in onnxruntime with a warning, not in a crash."""
        monkeypatch.setattr(trt_probe, "probe_gpu", lambda device=0: GPU)
        with capture_logs() as logs:
            engine = load_engine(card(), "auto")
        assert engine.name == "onnxruntime"
        assert engine.info.reason.startswith("auto: tensorrt failed (tensorrt unavailable")
        assert any(e["event"] == "engine_fallback" and e["log_level"] == "warning" for e in logs)
        assert engine.infer(music_windows(1))["tags"].shape == (1, 50)

    def test_daemon_modules_do_not_import_torch(self) -> None:
        """Selecting and running onnxruntime in a fresh interpreter never loads torch."""
        import subprocess
        import sys

        code = (
            "import sys, numpy as np; from streamclf.backends import load_engine, run_batched;"
            f"e = load_engine({str(card().onnx_path)!r}, 'auto');"
            "run_batched(e, [np.zeros((187, 96), np.float32)]);"
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, 'heavy import'"
        )
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


class TestOneDecision:
    """`load_runner` probes the GPU once and hands its decision down to `load_engine`."""

    @pytest.mark.parametrize(("model", "probe", "mode"), [
        ("MTT_musicnn", NO_GPU, "incremental"),  # the incremental runner on onnxruntime
        ("MTT_vgg", NO_GPU, "full"),  # full windows: load_engine takes the decision
        ("MTT_musicnn", GPU, "full"),  # TensorRT chosen, cannot load here: falls back, once
    ])
    def test_probed_once(self, monkeypatch: pytest.MonkeyPatch, model, probe, mode) -> None:
        probes = []
        monkeypatch.setattr(trt_probe, "probe_gpu", lambda device=0: probes.append(1) or probe)
        with capture_logs() as logs:
            runner = load_runner(model, "auto", max_batch=2)
        try:
            assert len(probes) == 1
            assert [e["mode"] for e in logs if e["event"] == "runner_selected"] == [mode]
            assert isinstance(runner, FullWindowRunner) == (mode == "full")
            assert runner.info.name == "onnxruntime"
        finally:
            runner.close()


class TestDefaultPrecision:
    """fp16 where the GPU has tensor cores, fp32 before."""

    @pytest.mark.parametrize(
        ("cc", "precision"), [("6.1", "fp32"), ("7.0", "fp16"), ("8.9", "fp16"), ("10.0", "fp16")]
    )
    def test_by_compute_capability(self, cc: str, precision: str) -> None:
        assert trt_probe.default_precision(cc) == precision

    def test_plan_key_follows_the_model_bytes(self, tmp_path) -> None:
        a = tmp_path / "MSD_musicnn.onnx"
        a.write_bytes(card().onnx_path.read_bytes())
        key = plan_key(a, GPU, precision="fp16", max_batch=32)
        assert (
            key.gpu_name == "NVIDIA L4" and key.compute_capability == "8.9" and key.opt_batch == 1
        )
        a.write_bytes(a.read_bytes() + b"\0")
        assert plan_key(a, GPU, precision="fp16", max_batch=32) != key

    def test_unknown_precision(self) -> None:
        with pytest.raises(EngineError, match="unknown precision 'int8'"):
            plan_key(card().onnx_path, GPU, precision="int8", max_batch=32)
