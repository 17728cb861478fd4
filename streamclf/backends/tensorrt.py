"""TensorRT 10 on an NVIDIA GPU, with pycuda for memory and the stream (the `gpu` extra).

A plan (serialized engine) is built from the ONNX file once per machine and cached by
`streamclf.backends.plans`: FP16 where the GPU has fast FP16 (compute capability >= 7.0),
FP32 on request, one optimisation profile for batch 1..max_batch. In FP16 plans the layers
after the last convolution or matrix product (the sigmoid, and the fused model's calibration,
whose log(1 - p) is -inf once p rounds to 1 in FP16) are held in FP32. At load, buffers are
allocated once, sized from the execution context with the full batch set: page-locked host
memory, device memory, one CUDA stream, tensor addresses set once; each `infer` is copy in,
execute_async_v3, copy out, synchronise. A self-test against ONNX Runtime on two windows
(silence and loud noise, compared as the start-up self-test compares: `backends.selftest`)
decides whether the plan is trusted at all. No CUDA graph: a musicnn window is a few hundred
microseconds of GPU work and the engine worker calls once per hop, so the launch overhead a
graph removes does not matter here.

Only TensorRT 10 is accepted: TensorRT 11 removed the FP16 builder flag (its networks are
strongly typed), so a plan would need an FP16 copy of the model instead. Every failure to
bring the engine up, whatever raised it (pycuda, TensorRT, a changed API), is an EngineError,
so that `auto` falls back to ONNX Runtime. All CUDA work goes through
`streamclf.backends.cuda.CudaContext`, so the engine loads on one thread and runs on another.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
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
from streamclf.backends.cuda import CudaContext
from streamclf.backends.plans import PlanCache, PlanKey, default_plan_dir, file_sha256
from streamclf.backends.selftest import outputs_problem
from streamclf.errors import EngineError, StreamclfError
from streamclf.features.mel import N_MELS, WINDOW_FRAMES

log = structlog.get_logger(__name__)

WORKSPACE_BYTES = 1 << 30
PRECISIONS = ("fp16", "fp32")
TENSORRT_MAJOR = 10  # the API this module is written against; the gpu extra pins it
HEAVY_LAYER_TYPES = ("CONVOLUTION", "MATRIX_MULTIPLY")  # what FP16 is for


def probe_gpu(device: int = 0) -> GpuProbe:
    """Whether TensorRT can run here, and on what; never raises."""
    try:
        import tensorrt as trt
    except ImportError:
        return GpuProbe(problem="tensorrt is not installed (pip install 'streamclf[gpu]')")
    except Exception as exc:  # noqa: BLE001
        # a broken install raises OSError (libnvinfer) and others
        return GpuProbe(problem=f"tensorrt cannot be imported: {exc}")
    version = str(getattr(trt, "__version__", "unknown"))
    if version.split(".")[0] != str(TENSORRT_MAJOR):
        return GpuProbe(tensorrt_version=version, problem=(
            f"TensorRT {version} is not supported (streamclf needs TensorRT {TENSORRT_MAJOR}: "
            f"pip install 'tensorrt>={TENSORRT_MAJOR},<{TENSORRT_MAJOR + 1}')"))
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() <= device:
            return GpuProbe(tensorrt_version=version, problem="no CUDA device")
        gpu = cuda.Device(device)
        major, minor = gpu.compute_capability()
        name = gpu.name()
    except ImportError:
        return GpuProbe(tensorrt_version=version, problem="pycuda is not installed")
    except Exception as exc:  # noqa: BLE001
        # pycuda raises cuda.Error kinds, OSError without a driver
        return GpuProbe(tensorrt_version=version, problem=f"CUDA unavailable: {exc}")
    return GpuProbe(
        tensorrt_version=version, gpu_name=name, compute_capability=f"{major}.{minor}"
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


Layer = tuple[str, Sequence[str], Sequence[str]]  # type, input tensor names, output tensor names


def fp32_head(layers: Sequence[Layer], *, output: str) -> set[int]:
    """The layers between the last convolution or matrix product and `output`.

    `layers` are (type, input tensor names, output tensor names) in network order. Returned:
    the indices of the layers `output` depends on that no convolution or matrix product
    depends on, those heavy layers excluded: the cheap tail (sigmoid, calibration, softmax)
    that FP16 gains nothing from and that its range can break.
    """
    producer = {name: i for i, (_, _, outputs) in enumerate(layers) for name in outputs}

    def upstream(names: Sequence[str]) -> set[int]:
        seen: set[int] = set()
        todo = [producer[n] for n in names if n in producer]
        while todo:
            i = todo.pop()
            if i not in seen:
                seen.add(i)
                todo += [producer[n] for n in layers[i][1] if n in producer]
        return seen

    heavy = {i for i, (kind, _, _) in enumerate(layers) if kind in HEAVY_LAYER_TYPES}
    feeds_heavy = heavy | upstream([n for i in heavy for n in layers[i][1]])
    return upstream([output]) - feeds_heavy


def _hold_head_in_fp32(trt, network) -> int:
    """Constrain the FP32 head's float layers to FP32; returns how many were constrained."""
    floats = (trt.float32, trt.float16)
    layers, described = [], []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        outputs = [layer.get_output(k) for k in range(layer.num_outputs)]
        layers.append((layer, outputs))
        described.append((str(layer.type).rsplit(".", 1)[-1],
                          [t.name for t in inputs if t is not None], [t.name for t in outputs]))
    held = 0
    for i in fp32_head(described, output=OUTPUT_NAMES[0]):
        layer, outputs = layers[i]
        if outputs and all(t.dtype in floats for t in outputs):  # shape arithmetic stays int
            layer.precision = trt.float32
            for k in range(len(outputs)):
                layer.set_output_type(k, trt.float32)
            held += 1
    return held


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
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log.info("plan_fp32_head", model=key.model, layers=_hold_head_in_fp32(trt, network))
    profile = builder.create_optimization_profile()
    window = (WINDOW_FRAMES, N_MELS)
    profile.set_shape(
        INPUT_NAME, (key.min_batch, *window), (key.opt_batch, *window), (key.max_batch, *window)
    )
    if config.add_optimization_profile(profile) < 0:
        msg = (f"{path}: TensorRT refused the batch profile {key.min_batch}..{key.max_batch} "
               f"for input '{INPUT_NAME}'")
        raise EngineError(msg)
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
                f"{'cached  ' if cached else 'building'} {key.model} {precision} "
                f"on {probe.gpu_name}"
            )
            started = time.monotonic()
            if not cached:
                cached_plan(path, key, cache, rebuild=True)
                progress(f"built    {key.model} {precision} in {time.monotonic() - started:.1f} s")
            built.append(cache.plan_path(key))
    return built


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
            self._runtime = trt.Runtime(_logger())
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
