"""Which engine runs, decided once, and the window runner the engine worker and `classify` call.

`decide_engine` is the one place that probes the GPU and resolves "auto"; its `EngineChoice` is
passed down to `load_engine` and `load_runner`, so nothing else probes or chooses again. A
window runner is the incremental runner (`streamclf.backends.incremental`) where the model and
the engine allow it, else a `FullWindowRunner` around any engine; the choice is logged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog

from streamclf.backends.base import (
    DEFAULT_MAX_BATCH,
    Engine,
    EngineInfo,
    GpuProbe,
    model_path,
    new_batch_buffer,
    run_batched,
)
from streamclf.backends.incremental import CONTEXT_FRAMES, SPLIT_DIR, IncrementalRunner
from streamclf.backends.quantize import choose_split
from streamclf.errors import EngineError, ModelError
from streamclf.features.framer import Window
from streamclf.models.card import ModelCard, architecture_of, load_model_card

log = structlog.get_logger(__name__)

KINDS = ("auto", "onnxruntime", "tensorrt", "torch")


# -- the decision -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineChoice:
    """The engine kind to load, why, what was asked (a failed TensorRT under "auto" may still
    fall back to onnxruntime; an explicit kind may not) and the probe it was decided on."""

    kind: str
    reason: str
    requested: str
    probe: GpuProbe


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


def decide_engine(requested: str) -> EngineChoice:
    """Probe the GPU where `requested` may use it, and resolve it: the one decision."""
    if requested in ("auto", "tensorrt"):
        from streamclf.backends.trt_probe import probe_gpu

        probe = probe_gpu()
    else:
        probe = GpuProbe(problem="not probed")
    kind, reason = choose_kind(requested, probe)
    return EngineChoice(kind=kind, reason=reason, requested=requested, probe=probe)


def load_engine(
    model: object,
    kind: str | EngineChoice = "auto",
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    precision: str | None = None,
    threads: int | None = None,
    plan_dir: str | os.PathLike[str] | None = None,
) -> Engine:
    """Load the model (a ModelCard or an ONNX path) on the engine `kind` resolves to.

    `kind` is a kind to decide (`decide_engine`) or a decision already made. `precision` is
    "fp32" or "fp16" (TensorRT only; default: fp16 where the GPU is fast at it). Under "auto",
    a TensorRT engine that cannot be built or loaded falls back to onnxruntime with a warning;
    an explicit kind raises EngineError instead.
    """
    path = model_path(model)
    choice = kind if isinstance(kind, EngineChoice) else decide_engine(kind)
    chosen, reason = choice.kind, choice.reason
    if chosen == "tensorrt":
        from streamclf.backends.tensorrt import TensorRTEngine

        try:
            engine: Engine = TensorRTEngine(
                path, max_batch=max_batch, precision=precision, plan_dir=plan_dir, reason=reason,
                probe=choice.probe,
            )
        except EngineError as exc:
            if choice.requested != "auto":
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
    """A model whose outputs do not fit its card's labels fails at load, not on the first window.
    Every engine knows its tag width once loaded (`info.n_tags`, from the model's declared
    output shape or its build), so no window is run for it: one window is a tenth of
    `classify`'s engine time on a 30 s clip."""
    labels = getattr(model, "labels", None)
    if labels is None:
        return
    width = engine.info.n_tags
    if width != len(labels):
        engine.close()
        msg = (
            f"{model_path(model)}: the model gives {width} tag probabilities but its card "
            f"lists {len(labels)} labels"
        )
        raise ModelError(msg)


# -- runners ----------------------------------------------------------------------------------


class WindowRunner(Protocol):
    """What the engine worker calls: windows of any streams in, outputs in input order."""

    info: EngineInfo

    @property
    def max_batch(self) -> int: ...

    def run(self, items: Sequence[tuple[str, Window]]) -> dict[str, np.ndarray]:
        """items [(stream_id, window)] → {'tags': [N, 50], 'embedding': [N, D]}."""
        ...

    def reset(self, stream_id: str | None = None) -> None: ...

    def warmup(self) -> None: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...


class FullWindowRunner:
    """Every window through the full model on any engine: the fallback, and the reference."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.info = engine.info
        self._buffer = new_batch_buffer(engine.max_batch)

    @property
    def max_batch(self) -> int:
        return self.engine.max_batch

    def run(self, items: Sequence[tuple[str, Window]]) -> dict[str, np.ndarray]:
        return run_batched(self.engine, [w.frames for _, w in items], buffer=self._buffer)

    def reset(self, stream_id: str | None = None) -> None:
        """Nothing is kept between windows."""

    def warmup(self) -> None:
        self.engine.warmup()

    def interrupt(self) -> None:
        self.engine.interrupt()

    def close(self) -> None:
        self.engine.close()


def load_runner(
    model: ModelCard | str | os.PathLike[str],
    kind: str = "auto",
    *,
    incremental: bool = True,
    hop_frames: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    precision: str | None = None,
    threads: int | None = None,
    plan_dir: str | os.PathLike[str] | None = None,
    split_dir: Path = SPLIT_DIR,
    cpu_precision: str = "fp32",
) -> WindowRunner:
    """The incremental runner where the model and the engine allow it, else full windows.

    Incremental needs a musicnn model with a matching split and the onnxruntime engine (the
    split graphs have two inputs, which the TensorRT and torch engines do not take); under
    "auto" a usable GPU wins, with full windows on TensorRT. Windows `hop_frames` apart (when
    known) must overlap by more than the 6 edge frames for anything to be reused, so `classify`'s
    non-overlapping patches run full windows. `cpu_precision` picks the int8 split where
    one is shipped (`streamclf.backends.quantize`). The choice is logged with its reason.
    """
    card = model if isinstance(model, ModelCard) else load_model_card(model)
    choice = decide_engine(kind)
    reason = ""
    if not incremental:
        reason = "incremental inference disabled"
    elif architecture_of(card.name) == "vgg":
        reason = f"{card.name}: every VGG layer pads and pools by 2, no per-frame part to reuse"
    elif hop_frames is not None and hop_frames >= card.window_frames - 2 * CONTEXT_FRAMES:
        reason = f"hop of {hop_frames} frames: consecutive windows share no reusable frame"
    elif choice.kind != "onnxruntime":
        reason = f"engine {choice.kind} ({choice.reason}) runs full windows only"
    else:
        try:
            split_dir, cpu_chosen, cpu_why = choose_split(card.name, cpu_precision,
                                                          fp32_dir=split_dir)
            runner = IncrementalRunner(card, max_batch=max_batch, threads=threads,
                                       split_dir=split_dir, precision=cpu_chosen,
                                       reason=f"{choice.reason}; {cpu_chosen}: {cpu_why}")
        except ModelError as exc:
            reason = str(exc)
        else:
            log.info("runner_selected", mode="incremental", model=card.name, reason=choice.reason,
                     precision=cpu_chosen, precision_reason=cpu_why)
            return runner
    log.info("runner_selected", mode="full", model=card.name, reason=reason)
    engine = load_engine(card, kind=choice, max_batch=max_batch, precision=precision,
                         threads=threads, plan_dir=plan_dir)
    return FullWindowRunner(engine)
