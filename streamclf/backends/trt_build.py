"""Building TensorRT plans from ONNX files, and `streamclf engine build` ahead of time.

A plan (serialized engine) is built from the ONNX file once per machine and cached by
`streamclf.backends.plans`: FP16 where the GPU has fast FP16 (compute capability >= 7.0),
FP32 on request, one optimisation profile for batch 1..max_batch. In FP16 plans the layers
after the last convolution or matrix product (the sigmoid, and the fused model's calibration,
whose log(1 - p) is -inf once p rounds to 1 in FP16) are held in FP32.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from streamclf.backends.base import DEFAULT_MAX_BATCH, INPUT_NAME, OUTPUT_NAMES, model_path
from streamclf.backends.plans import PlanCache, PlanKey, default_plan_dir, plan_key
from streamclf.backends.trt_probe import default_precision, probe_gpu
from streamclf.errors import EngineError
from streamclf.features.mel import N_MELS, WINDOW_FRAMES

log = structlog.get_logger(__name__)

WORKSPACE_BYTES = 1 << 30
HEAVY_LAYER_TYPES = ("CONVOLUTION", "MATRIX_MULTIPLY")  # what FP16 is for


@functools.cache
def trt_logger():
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

    logger = trt_logger()
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
