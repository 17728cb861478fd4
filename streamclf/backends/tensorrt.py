"""TensorRT 10 on an NVIDIA GPU, with pycuda for memory and the stream (the `gpu` extra).

A plan (serialized engine) is built from the ONNX file once per machine and cached by
`streamclf.backends.plans`: FP16 where the GPU has fast FP16 (compute capability >= 7.0),
FP32 on request, one optimisation profile for batch 1..max_batch. At load, buffers are
allocated once: page-locked host memory, device memory, one CUDA stream, tensor addresses set
once; each `infer` is copy in, execute_async_v3, copy out, synchronise. No CUDA graph: a
musicnn window is a few hundred microseconds of GPU work and the engine worker calls once per
hop, so the launch overhead a graph removes does not matter here.

All CUDA calls run inside the device's primary context (the one TensorRT's runtime API uses),
pushed around each call, so the engine can be loaded on one thread and used on another.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
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
    model_path,
)
from streamclf.backends.plans import PlanCache, PlanKey, default_plan_dir, file_sha256
from streamclf.errors import EngineError
from streamclf.features.mel import N_MELS, WINDOW_FRAMES

log = structlog.get_logger(__name__)

WORKSPACE_BYTES = 1 << 30
PRECISIONS = ("fp16", "fp32")


def probe_gpu(device: int = 0) -> GpuProbe:
    """Whether TensorRT can run here, and on what; never raises."""
    try:
        import tensorrt as trt
    except ImportError:
        return GpuProbe(problem="tensorrt is not installed (pip install 'streamclf[gpu]')")
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() <= device:
            return GpuProbe(tensorrt_version=trt.__version__, problem="no CUDA device")
        gpu = cuda.Device(device)
        major, minor = gpu.compute_capability()
        name = gpu.name()
    except ImportError:
        return GpuProbe(tensorrt_version=trt.__version__, problem="pycuda is not installed")
    except Exception as exc:  # noqa: BLE001 - pycuda raises cuda.Error kinds, OSError without a driver
        return GpuProbe(tensorrt_version=trt.__version__, problem=f"CUDA unavailable: {exc}")
    return GpuProbe(
        tensorrt_version=trt.__version__, gpu_name=name, compute_capability=f"{major}.{minor}"
    )


def default_precision(compute_capability: str) -> str:
    """fp16 on GPUs with tensor cores (compute capability >= 7.0), else fp32.

    TensorRT 10.5 deprecated `platform_has_fast_fp16` in favour of asking CUDA, which is this.
    """
    major, minor = (int(part) for part in compute_capability.split("."))
    return "fp16" if (major, minor) >= (7, 0) else "fp32"


def plan_key(
    path: Path, probe: GpuProbe, *, precision: str, max_batch: int, opt_batch: int = 1
) -> PlanKey:
    if precision not in PRECISIONS:
        msg = f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})"
        raise EngineError(msg)
    return PlanKey(
        model=path.stem,
        onnx_sha256=file_sha256(path),
        tensorrt_version=probe.tensorrt_version,
        gpu_name=probe.gpu_name,
        compute_capability=probe.compute_capability,
        precision=precision,
        min_batch=1,
        opt_batch=min(opt_batch, max_batch),
        max_batch=max_batch,
    )


@functools.cache
def _logger():
    """One process-wide logger: TensorRT needs it to outlive every builder and runtime."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def build_plan(path: Path, key: PlanKey, *, workspace_bytes: int = WORKSPACE_BYTES) -> bytes:
    """Build a serialized engine from the ONNX file for `key`'s precision and batch profile."""
    import tensorrt as trt

    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        msg = f"{path}: TensorRT cannot parse the model ({errors})"
        raise EngineError(msg)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if key.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    window = (WINDOW_FRAMES, N_MELS)
    profile.set_shape(
        INPUT_NAME, (key.min_batch, *window), (key.opt_batch, *window), (key.max_batch, *window)
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        msg = f"{path}: TensorRT failed to build a {key.precision} plan (see the log above)"
        raise EngineError(msg)
    return bytes(serialized)


def cached_plan(path: Path, key: PlanKey, cache: PlanCache, *, rebuild: bool = False) -> bytes:
    """The plan for `key` from the cache, built and stored first when absent or damaged."""
    plan = None if rebuild else cache.load(key)
    if plan is None:
        log.info("plan_build_start", model=key.model, precision=key.precision, gpu=key.gpu_name)
        started = time.monotonic()
        plan = build_plan(path, key)
        cache.store(key, plan, build_s=time.monotonic() - started)
    return plan


def build_plans(
    models: Sequence[object],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    precisions: Sequence[str] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> list[Path]:
    """`streamclf engine build`: build (or find) the plan for each model and precision.

    `models` are ModelCards or ONNX paths; `precisions` defaults to this GPU's default.
    Returns the plan files; progress is reported one line per plan.
    """
    probe = probe_gpu()
    if not probe.usable:
        msg = f"cannot build TensorRT plans here: {probe.problem}"
        raise EngineError(msg)
    cache = PlanCache(cache_dir or default_plan_dir())
    precisions = precisions or [default_precision(probe.compute_capability)]
    built = []
    for model in models:
        path = model_path(model)
        for precision in precisions:
            key = plan_key(path, probe, precision=precision, max_batch=max_batch)
            cached = not force and cache.load(key) is not None
            progress(
                f"{'cached  ' if cached else 'building'} {key.model} {precision} on {probe.gpu_name}"
            )
            started = time.monotonic()
            if not cached:
                cached_plan(path, key, cache, rebuild=True)
                progress(f"built    {key.model} {precision} in {time.monotonic() - started:.1f} s")
            built.append(cache.plan_path(key))
    return built


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
    ) -> None:
        path = Path(path)
        probe = probe_gpu(device)
        if not probe.usable:
            raise EngineError(f"tensorrt unavailable: {probe.problem}")
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise EngineError(f"tensorrt unavailable: {exc}") from exc
        precision = precision or default_precision(probe.compute_capability)
        key = plan_key(path, probe, precision=precision, max_batch=max_batch)
        cache = PlanCache(plan_dir or default_plan_dir())
        self._cuda_context = cuda.Device(device).retain_primary_context()
        try:
            with self._pushed():
                self._runtime = trt.Runtime(_logger())
                self._engine = self._deserialize(cached_plan(path, key, cache))
                if self._engine is None:  # TensorRT refused the bytes: never trust that plan again
                    log.warning("plan_rejected", model=key.model, path=str(cache.plan_path(key)))
                    self._engine = self._deserialize(cached_plan(path, key, cache, rebuild=True))
                if self._engine is None:
                    raise EngineError(f"{path}: TensorRT cannot load the plan it just built")
                self._allocate(cuda, trt, path, max_batch)
        except BaseException:
            self._cuda_context.detach()
            raise
        self.info = EngineInfo(
            name="tensorrt",
            device=f"cuda:{device} {probe.gpu_name} (sm_{probe.compute_capability.replace('.', '')})",
            precision=precision,
            max_batch=max_batch,
            model=path.stem,
            embedding_dim=self._host_out["embedding"].shape[1],
            reason=reason,
            n_tags=self._host_out["tags"].shape[1],
        )

    def _deserialize(self, plan: bytes):
        """The ICudaEngine, or None when TensorRT rejects the plan (wrong version, damaged)."""
        try:
            return self._runtime.deserialize_cuda_engine(plan)
        except Exception as exc:  # noqa: BLE001 - the bindings raise on some rejections, return None on others
            log.warning("plan_deserialize_failed", error=str(exc))
            return None

    def _allocate(self, cuda, trt, path: Path, max_batch: int) -> None:
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        shapes = {n: [d if d >= 0 else None for d in engine.get_tensor_shape(n)] for n in names}
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        check_model_io(
            source=str(path),
            inputs=[(n, shapes[n]) for n in names if is_input[n]],
            outputs=[(n, shapes[n]) for n in names if not is_input[n]],
        )
        self._context = engine.create_execution_context()
        self._stream = cuda.Stream()
        self._host_in = cuda.pagelocked_empty((max_batch, WINDOW_FRAMES, N_MELS), np.float32)
        self._device_in = cuda.mem_alloc(self._host_in.nbytes)
        self._context.set_tensor_address(INPUT_NAME, int(self._device_in))
        self._host_out, self._device_out = {}, {}
        for name in (n for n in names if not is_input[n]):
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            self._host_out[name] = cuda.pagelocked_empty((max_batch, *shapes[name][1:]), dtype)
            self._device_out[name] = cuda.mem_alloc(self._host_out[name].nbytes)
            self._context.set_tensor_address(name, int(self._device_out[name]))

    @contextlib.contextmanager
    def _pushed(self) -> Iterator[None]:
        self._cuda_context.push()
        try:
            yield
        finally:
            self._cuda_context.pop()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import pycuda.driver as cuda

        batch = check_batch(batch, self.info.max_batch)
        n = len(batch)
        with self._pushed():
            self._host_in[:n] = batch
            cuda.memcpy_htod_async(self._device_in, self._host_in[:n], self._stream)
            self._context.set_input_shape(INPUT_NAME, (n, WINDOW_FRAMES, N_MELS))
            if not self._context.execute_async_v3(self._stream.handle):
                raise EngineError("TensorRT execution failed")
            for name, host in self._host_out.items():
                cuda.memcpy_dtoh_async(host[:n], self._device_out[name], self._stream)
            self._stream.synchronize()
        return {name: self._host_out[name][:n].astype(np.float32) for name in OUTPUT_NAMES}

    def close(self) -> None:
        """Free GPU memory while the context is current, then release the primary context."""
        if self._cuda_context is None:
            return
        with self._pushed():
            for device_buffer in (self._device_in, *self._device_out.values()):
                device_buffer.free()
            self._device_out = {}
            self._context = None
            self._engine = None
            self._runtime = None
        self._cuda_context.detach()
        self._cuda_context = None
