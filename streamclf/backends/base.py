"""The engine interface, the choice of engine, and batching of ready windows.

An engine maps a batch of log-mel windows `[B, 187, 96]` to tag probabilities `[B, 50]` and
the penultimate-layer embedding `[B, D]`. Which engine runs is decided once, at load, and the
choice is logged with its reason. A remote backend (e.g. Triton) would be one more module
implementing `Engine`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import structlog

from streamclf.errors import EngineError, ModelError
from streamclf.features.mel import N_MELS, WINDOW_FRAMES

log = structlog.get_logger(__name__)

INPUT_NAME = "logmel"
OUTPUT_NAMES = ("tags", "embedding")
N_TAGS = 50
DEFAULT_MAX_BATCH = 32
KINDS = ("auto", "onnxruntime", "tensorrt", "torch")


@dataclass(frozen=True)
class EngineInfo:
    """What runs the model, for logs, the feed's status messages and `engine info`."""

    name: str
    device: str
    precision: str
    max_batch: int
    model: str
    embedding_dim: int
    reason: str = ""
    n_tags: int = N_TAGS


@runtime_checkable
class Engine(Protocol):
    """Runs one model; `infer` is called from one thread (the engine worker)."""

    info: EngineInfo

    @property
    def name(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def max_batch(self) -> int: ...

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """batch float32 [B, 187, 96], 1 <= B <= max_batch -> {'tags': [B, 50], 'embedding': [B, D]}."""
        ...

    def warmup(self) -> None: ...

    def interrupt(self) -> None:
        """Make a call in progress, and every later one, end early: the pipeline is stopping."""
        ...

    def close(self) -> None: ...


class InfoFields:
    """The contract's `name`, `device`, `precision`, `max_batch`, read from `self.info`."""

    info: EngineInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def device(self) -> str:
        return self.info.device

    @property
    def precision(self) -> str:
        return self.info.precision

    @property
    def max_batch(self) -> int:
        return self.info.max_batch

    def interrupt(self) -> None:
        """Nothing to do for an engine whose calls are short (a GPU's); ONNX Runtime's are not."""

    def warmup(self) -> None:
        """Run a few full and single batches so the first real window pays no set-up cost."""
        for batch in (1, self.info.max_batch, 1):
            self.infer(np.zeros((batch, WINDOW_FRAMES, N_MELS), np.float32))  # type: ignore[attr-defined]


def check_model_io(
    *,
    source: str,
    inputs: Sequence[tuple[str, Sequence[int | str | None]]],
    outputs: Sequence[tuple[str, Sequence[int | str | None]]],
) -> tuple[int, int]:
    """Check a model's inputs and outputs against the contract; return (N, D).

    Shapes list one entry per axis: an int for a fixed size, a str or None for a dynamic one.
    Expected: one input `logmel [B, 187, 96]`, outputs `tags [B, N]` (N = the card's labels:
    50 for the stock taggers, the families or a trained head's classes otherwise) and
    `embedding [B, D]`.
    """
    if [name for name, _ in inputs] != [INPUT_NAME]:
        found = ", ".join(name for name, _ in inputs)
        msg = f"{source}: expected one input '{INPUT_NAME}', found: {found or 'none'}"
        raise ModelError(msg)
    in_shape = list(inputs[0][1])
    if len(in_shape) != 3 or in_shape[1:] != [WINDOW_FRAMES, N_MELS]:
        msg = f"{source}: input '{INPUT_NAME}' has shape {in_shape}, expected [batch, {WINDOW_FRAMES}, {N_MELS}]"
        raise ModelError(msg)
    shapes = dict(outputs)
    missing = [name for name in OUTPUT_NAMES if name not in shapes]
    if missing:
        msg = (
            f"{source}: missing output(s) {', '.join(missing)}; found {', '.join(shapes) or 'none'}"
        )
        raise ModelError(msg)
    tags, embedding = list(shapes["tags"]), list(shapes["embedding"])
    if len(tags) != 2 or not isinstance(tags[1], int) or tags[1] < 1:
        msg = f"{source}: output 'tags' has shape {tags}, expected [batch, N]"
        raise ModelError(msg)
    if len(embedding) != 2 or not isinstance(embedding[1], int):
        msg = f"{source}: output 'embedding' has shape {embedding}, expected [batch, D]"
        raise ModelError(msg)
    return tags[1], embedding[1]


def check_batch(batch: np.ndarray, max_batch: int) -> np.ndarray:
    """Return `batch` as C-contiguous float32 [B, 187, 96] or raise ValueError (a caller bug)."""
    if (
        batch.ndim != 3
        or batch.shape[1:] != (WINDOW_FRAMES, N_MELS)
        or not 1 <= len(batch) <= max_batch
    ):
        msg = f"batch shape {batch.shape} is not [1..{max_batch}, {WINDOW_FRAMES}, {N_MELS}]"
        raise ValueError(msg)
    return np.ascontiguousarray(batch, dtype=np.float32)


def model_path(model: object) -> Path:
    """The ONNX file of a model card (anything with `onnx_path`) or of a plain path."""
    path = Path(getattr(model, "onnx_path", model))  # type: ignore[arg-type]
    if not path.is_file():
        msg = f"model file not found: {path}"
        raise ModelError(msg)
    return path


# -- selection ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuProbe:
    """What this machine offers for TensorRT; `problem` says why it cannot be used, if so."""

    tensorrt_version: str = ""
    gpu_name: str = ""
    compute_capability: str = ""
    problem: str = ""

    @property
    def usable(self) -> bool:
        return not self.problem


def choose_kind(requested: str, probe: GpuProbe) -> tuple[str, str]:
    """Resolve `requested` (one of KINDS) to a concrete engine kind and the reason for it."""
    if requested not in KINDS:
        msg = f"unknown engine kind '{requested}' (choose from {', '.join(KINDS)})"
        raise EngineError(msg)
    if requested != "auto":
        if requested == "tensorrt" and not probe.usable:
            msg = f"tensorrt engine requested but unavailable: {probe.problem}"
            raise EngineError(msg)
        return requested, "requested"
    if probe.usable:
        return "tensorrt", (
            f"auto: TensorRT {probe.tensorrt_version} on {probe.gpu_name}"
            f" (sm_{probe.compute_capability.replace('.', '')})"
        )
    return "onnxruntime", f"auto: no usable GPU ({probe.problem})"


def load_engine(
    model: object,
    kind: str = "auto",
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    precision: str | None = None,
    threads: int | None = None,
    plan_dir: str | os.PathLike[str] | None = None,
) -> Engine:
    """Load the model (a ModelCard or an ONNX path) on the engine `kind` resolves to.

    `precision` is "fp32" or "fp16" (TensorRT only; default: fp16 where the GPU is fast at it).
    Under "auto", a TensorRT engine that cannot be built or loaded falls back to onnxruntime
    with a warning; an explicit kind raises EngineError instead.
    """
    path = model_path(model)
    if kind in ("auto", "tensorrt"):
        from streamclf.backends.tensorrt import probe_gpu

        probe = probe_gpu()
    else:
        probe = GpuProbe(problem="not probed")
    chosen, reason = choose_kind(kind, probe)
    if chosen == "tensorrt":
        from streamclf.backends.tensorrt import TensorRTEngine

        try:
            engine: Engine = TensorRTEngine(
                path, max_batch=max_batch, precision=precision, plan_dir=plan_dir, reason=reason
            )
        except EngineError as exc:
            if kind != "auto":
                raise
            log.warning("engine_fallback", frm="tensorrt", to="onnxruntime", error=str(exc))
            chosen, reason = "onnxruntime", f"auto: tensorrt failed ({exc})"
    if chosen == "onnxruntime":
        from streamclf.backends.onnx import OnnxEngine

        engine = OnnxEngine(path, max_batch=max_batch, threads=threads, reason=reason)
    elif chosen == "torch":
        from streamclf.backends.torch import TorchEngine

        engine = TorchEngine(path, max_batch=max_batch, threads=threads, reason=reason)
    _check_matches_card(engine, model)
    info = engine.info
    log.info(
        "engine_selected",
        engine=info.name,
        device=info.device,
        precision=info.precision,
        max_batch=info.max_batch,
        model=info.model,
        reason=reason,
    )
    return engine


def _check_matches_card(engine: Engine, model: object) -> None:
    """A model whose outputs do not fit its card's labels fails at load, not on the first window."""
    labels = getattr(model, "labels", None)
    if labels is None:
        return
    width = engine.infer(np.zeros((1, WINDOW_FRAMES, N_MELS), np.float32))["tags"].shape[1]
    if width != len(labels):
        engine.close()
        msg = (
            f"{model_path(model)}: the model gives {width} tag probabilities but its card "
            f"lists {len(labels)} labels"
        )
        raise ModelError(msg)


# -- batching -------------------------------------------------------------------------------


def new_batch_buffer(max_batch: int) -> np.ndarray:
    """A reusable float32 [max_batch, 187, 96] input buffer for `run_batched`."""
    return np.empty((max_batch, WINDOW_FRAMES, N_MELS), np.float32)


def run_batched(
    engine: Engine, frames: Sequence[np.ndarray], *, buffer: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Infer N windows at once: frames is a sequence of N float32 [187, 96] arrays.

    Windows are copied into `buffer` ([>= max_batch, 187, 96], allocated if None) and run
    in chunks of at most `engine.max_batch`; returns {'tags': [N, 50], 'embedding': [N, D]}
    in input order (N may be 0).
    """
    max_batch = engine.max_batch
    if buffer is None:
        buffer = new_batch_buffer(max_batch)
    chunks: list[dict[str, np.ndarray]] = []
    for start in range(0, len(frames), max_batch):
        chunk = frames[start : start + max_batch]
        for i, window in enumerate(chunk):
            if window.shape != buffer.shape[1:]:
                msg = f"window {start + i} has shape {window.shape}, expected {buffer.shape[1:]}"
                raise ValueError(msg)
            buffer[i] = window
        chunks.append(engine.infer(buffer[: len(chunk)]))
    if not chunks:
        return {
            "tags": np.empty((0, engine.info.n_tags), np.float32),
            "embedding": np.empty((0, engine.info.embedding_dim), np.float32),
        }
    if len(chunks) == 1:
        return chunks[0]
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
