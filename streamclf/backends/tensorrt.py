"""TensorRT 10 on an NVIDIA GPU, with pycuda for memory and the stream (the `gpu` extra).

The engine runs the plan `streamclf.backends.trt_build` builds, or finds in the plan cache, for
its model, precision (`trt_probe.default_precision` unless asked) and batch 1..max_batch. At
load, buffers are allocated once, sized from the execution context with the full batch set:
page-locked host memory, device memory, one CUDA stream, tensor addresses set once; each `infer`
is copy in, execute_async_v3, copy out, synchronise. A self-test against ONNX Runtime on two
windows (silence and loud noise, compared as the start-up self-test compares:
`backends.selftest`) decides whether the plan is trusted at all. No CUDA graph: a musicnn window
is a few hundred microseconds of GPU work and the engine worker calls once per hop, so the
launch overhead a graph removes does not matter here.

Every failure to bring the engine up, whatever raised it (pycuda, TensorRT, a changed API), is
an EngineError, so that `auto` falls back to ONNX Runtime. All CUDA work goes through
`streamclf.backends.cuda.CudaContext`, so the engine loads on one thread and runs on another.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import structlog

from streamclf.backends.base import (
    DEFAULT_MAX_BATCH,
    INPUT_NAME,
    OUTPUT_NAMES,
    EngineInfo,
    GpuProbe,
    InfoFields,
    check_batch,
    check_model_io,
)
from streamclf.backends.cuda import CudaContext
from streamclf.backends.plans import PlanCache, PlanKey, default_plan_dir, plan_key
from streamclf.backends.selftest import outputs_problem
from streamclf.backends.trt_build import cached_plan, trt_logger
from streamclf.backends.trt_probe import default_precision, probe_gpu
from streamclf.errors import EngineError, StreamclfError
from streamclf.features.mel import N_MELS, WINDOW_FRAMES

log = structlog.get_logger(__name__)


def self_test_windows() -> np.ndarray:
    """Two fixed windows for the start-up self-test: silence, and loud broadband noise."""
    noise = np.random.default_rng(20).uniform(0.0, 4.0, (WINDOW_FRAMES, N_MELS))
    return np.stack([np.zeros((WINDOW_FRAMES, N_MELS)), noise]).astype(np.float32)


class TensorRTEngine(InfoFields):
    """One deserialized plan with its execution context, buffers and stream."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        precision: str | None = None,
        plan_dir: str | os.PathLike[str] | None = None,
        device: int = 0,
        reason: str = "",
        probe: GpuProbe | None = None,
    ) -> None:
        path = Path(path)
        probe = probe or probe_gpu(device)  # the caller's decision already probed, where it did
        if not probe.usable:
            raise EngineError(f"tensorrt unavailable: {probe.problem}")
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise EngineError(f"tensorrt unavailable: {exc}") from exc
        precision = precision or default_precision(probe.compute_capability)
        key = plan_key(path, probe, precision=precision, max_batch=max_batch)
        self._cuda = cuda
        self._gpu: CudaContext | None = None
        self._runtime = self._engine = self._context = self._stream = None
        self._host_in = self._device_in = None
        self._host_out: dict[str, np.ndarray] = {}
        self._device_out: dict[str, object] = {}
        try:
            self._bring_up(trt, path, key, PlanCache(plan_dir or default_plan_dir()), device)
            self.info = EngineInfo(
                name="tensorrt",
                device=f"cuda:{device} {probe.gpu_name} "
                f"(sm_{probe.compute_capability.replace('.', '')})",
                precision=precision,
                max_batch=max_batch,
                model=path.stem,
                embedding_dim=self._host_out["embedding"].shape[1],
                reason=reason,
                n_tags=self._host_out["tags"].shape[1],
            )
            self._self_test(path)
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception) and not isinstance(exc, StreamclfError):
                msg = f"{path}: TensorRT could not start ({type(exc).__name__}: {exc})"
                raise EngineError(msg) from exc
            raise

    def _bring_up(self, trt, path: Path, key: PlanKey, cache: PlanCache, device: int) -> None:
        self._gpu = CudaContext(self._cuda, device)
        with self._gpu.current():
            self._runtime = trt.Runtime(trt_logger())
            self._engine = self._deserialize(cached_plan(path, key, cache))
            if self._engine is None:  # TensorRT refused the bytes: never trust that plan again
                log.warning("plan_rejected", model=key.model, path=str(cache.plan_path(key)))
                self._engine = self._deserialize(cached_plan(path, key, cache, rebuild=True))
            if self._engine is None:
                raise EngineError(f"{path}: TensorRT cannot load the plan it just built")
            self._allocate(trt, path, key.max_batch)

    def _self_test(self, path: Path) -> None:
        """A plan that disagrees with ONNX Runtime on two windows is never used."""
        from streamclf.backends.onnx import OnnxEngine

        windows = self_test_windows()
        reference_engine = OnnxEngine(path, max_batch=len(windows), threads=1)
        try:
            reference = reference_engine.infer(windows)
        finally:
            reference_engine.close()
        problem = outputs_problem(self.infer(windows), reference["tags"])
        if problem:
            msg = f"{path}: the {self.info.precision} plan failed its self-test: {problem}"
            raise EngineError(msg)
        log.info("engine_self_test_passed", model=path.stem, precision=self.info.precision)

    def _deserialize(self, plan: bytes):
        """The ICudaEngine, or None when TensorRT rejects the plan (wrong version, damaged)."""
        try:
            return self._runtime.deserialize_cuda_engine(plan)
        except Exception as exc:  # noqa: BLE001
            # the bindings raise on some rejections, return None on others
            log.warning("plan_deserialize_failed", error=str(exc))
            return None

    def _set_batch(self, n: int) -> None:
        if not self._context.set_input_shape(INPUT_NAME, (n, WINDOW_FRAMES, N_MELS)):
            shape = (n, WINDOW_FRAMES, N_MELS)
            msg = f"TensorRT refused input shape {shape} for '{INPUT_NAME}'"
            raise EngineError(msg)

    def _allocate(self, trt, path: Path, max_batch: int) -> None:
        """Buffers for the full batch, sized from the context: the engine's shapes hold -1."""
        cuda, engine = self._cuda, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"{path}: TensorRT could not create an execution context")
        shape_of = engine.get_tensor_shape  # names only, when the input is not ours
        if [n for n in names if is_input[n]] == [INPUT_NAME]:
            self._set_batch(max_batch)
            shape_of = self._context.get_tensor_shape
        shapes = {n: [d if d >= 0 else None for d in shape_of(n)] for n in names}
        check_model_io(
            source=str(path),
            inputs=[(n, shapes[n]) for n in names if is_input[n]],
            outputs=[(n, shapes[n]) for n in names if not is_input[n]],
        )
        self._stream = cuda.Stream()
        self._host_in = cuda.pagelocked_empty((max_batch, WINDOW_FRAMES, N_MELS), np.float32)
        self._device_in = cuda.mem_alloc(self._host_in.nbytes)
        self._context.set_tensor_address(INPUT_NAME, int(self._device_in))
        for name in (n for n in names if not is_input[n]):  # every output needs an address
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            self._host_out[name] = cuda.pagelocked_empty(tuple(shapes[name]), dtype)
            self._device_out[name] = cuda.mem_alloc(self._host_out[name].nbytes)
            self._context.set_tensor_address(name, int(self._device_out[name]))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cuda = self._cuda
        batch = check_batch(batch, self.info.max_batch)
        n = len(batch)
        with self._gpu.current():
            self._host_in[:n] = batch
            cuda.memcpy_htod_async(self._device_in, self._host_in[:n], self._stream)
            self._set_batch(n)
            if not self._context.execute_async_v3(self._stream.handle):
                raise EngineError("TensorRT execution failed")
            for name in OUTPUT_NAMES:
                host, device = self._host_out[name], self._device_out[name]
                cuda.memcpy_dtoh_async(host[:n], device, self._stream)
            self._stream.synchronize()
        return {name: self._host_out[name][:n].astype(np.float32) for name in OUTPUT_NAMES}

    def close(self) -> None:
        """Give back everything the engine holds, with its CUDA context current; idempotent."""
        if self._gpu is not None:
            self._gpu.release(self._free)

    def _free(self) -> None:
        """TensorRT's objects first (they hold device memory of their own, and the context
        reads the buffers), then device memory, page-locked memory, and the stream last."""
        if self._stream is not None:
            self._stream.synchronize()
        self._context = self._engine = self._runtime = None
        for device_buffer in (self._device_in, *self._device_out.values()):
            if device_buffer is not None:
                device_buffer.free()
        for host in (self._host_in, *self._host_out.values()):
            if host is not None:
                host.base.free()
        self._host_in = self._device_in = None
        self._host_out, self._device_out = {}, {}
        self._stream = None
