"""The engine interface, the contract's checks, and batching of ready windows.

An engine maps a batch of log-mel windows `[B, 187, 96]` to tag probabilities `[B, 50]` and
the penultimate-layer embedding `[B, D]`. Which engine runs is decided once, in
`streamclf.backends.runner`. A remote backend (e.g. Triton) would be one more module
implementing `Engine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from streamclf.errors import ModelError
from streamclf.features.mel import N_MELS, WINDOW_FRAMES

INPUT_NAME = "logmel"
OUTPUT_NAMES = ("tags", "embedding")
N_TAGS = 50
DEFAULT_MAX_BATCH = 32


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
        """batch float32 [B, 187, 96], 1 <= B <= max_batch
        -> {'tags': [B, 50], 'embedding': [B, D]}."""
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
            zeros = np.zeros((batch, WINDOW_FRAMES, N_MELS), np.float32)
            self.infer(zeros)  # type: ignore[attr-defined]


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
        msg = (f"{source}: input '{INPUT_NAME}' has shape {in_shape}, "
               f"expected [batch, {WINDOW_FRAMES}, {N_MELS}]")
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
