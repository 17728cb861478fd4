"""The start-up self-test: the chosen engine on a few windows of the bundled clip, against
ONNX Runtime fp32 outputs stored beside the model's card.

A new machine, driver or quantised model can compute wrong numbers without raising. After
warm-up, the runner the daemon will use gets the first `SELF_TEST_WINDOWS` windows of the
bundled clip, one call each at the default hop (so the incremental runner reuses frames as it
does in service), and its tags are compared with `selftest/<model>.json` beside the card (as
`split/` is), made by `tools/make_selftest_references.py` with ONNX Runtime on the CPU over full
windows. Within the
file's tolerance the runner is used; beyond it the daemon falls back to ONNX Runtime on the CPU,
unless the engine was forced in the config (EngineError, exit 5). A model without a reference
file (a head trained here) is used untested, and the log says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from streamclf.audio.files import BUNDLED_CLIP
from streamclf.audio.resample import Resampler
from streamclf.errors import EngineError, ModelError
from streamclf.features.framer import LogMelFramer, Window
from streamclf.features.mel import HOP_LENGTH, SAMPLE_RATE_HZ, WINDOW_FRAMES, frames_for_seconds
from streamclf.models.card import ModelCard

log = structlog.get_logger(__name__)

REFERENCE_SCHEMA = 1
SELF_TEST_WINDOWS = 3
SELF_TEST_HOP_FRAMES = frames_for_seconds(1.0)  # the default hop: 62 frames, 0.992 s
SELF_TEST_STREAM = "self-test"  # the stream id its windows run under; reset afterwards
# Largest |tags − reference| accepted: FP16 TensorRT agrees with ONNX Runtime to 1e-2
# (docs/engines.md), the incremental runner to 1e-5; a broken engine is off by far more.
TAGS_TOLERANCE = 0.05


def reference_path(card: ModelCard) -> Path:
    """Beside the card, in a folder of its own (so no listing of cards mistakes it for one)."""
    return card.card_path.parent / "selftest" / f"{card.name}.json"


def self_test_windows(count: int = SELF_TEST_WINDOWS) -> list[Window]:
    """The first `count` windows of the bundled clip, as the daemon's framer makes them from
    its first seconds (decoding only those keeps start-up short)."""
    import soundfile as sf

    needed_s = (WINDOW_FRAMES + (count - 1) * SELF_TEST_HOP_FRAMES) * HOP_LENGTH / SAMPLE_RATE_HZ
    with sf.SoundFile(BUNDLED_CLIP) as clip:
        audio = clip.read(int((needed_s + 0.5) * clip.samplerate), dtype="float32",
                          always_2d=True)
        resampler = Resampler(clip.samplerate, clip.channels, mix="mean")
    framer = LogMelFramer(WINDOW_FRAMES, SELF_TEST_HOP_FRAMES)
    return list(framer.push(resampler.push(audio)))[:count]


def outputs_problem(got: dict[str, np.ndarray], reference_tags: np.ndarray, *,
                    tolerance: float = TAGS_TOLERANCE) -> str:
    """Why outputs cannot be trusted against reference tags; "" if they can."""
    for name, values in got.items():
        if not np.isfinite(values).all():
            return f"non-finite '{name}' on the self-test windows"
    error = float(np.abs(got["tags"] - reference_tags).max())
    if error > tolerance:
        return f"tags differ from ONNX Runtime fp32 by {error:.3g} (> {tolerance:g})"
    return ""


@dataclass(frozen=True)
class References:
    """A model's stored self-test outputs (`selftest/<model>.json` beside its card)."""

    tags: np.ndarray  # [SELF_TEST_WINDOWS, labels]
    tolerance: float


def load_references(card: ModelCard) -> References | None:
    """The stored outputs for `card`'s model; None (logged) when there are none for this file."""
    path = reference_path(card)
    if not path.is_file():
        log.warning("engine_self_test_skipped", model=card.name,
                    reason=f"no reference outputs at {path}")
        return None
    try:
        document = json.loads(path.read_text())
        if document["onnx_sha256"] != card.sha256:
            log.warning("engine_self_test_skipped", model=card.name,
                        reason=f"{path} was made for another ONNX file")
            return None
        references = References(tags=np.asarray(document["tags"], dtype=np.float32),
                                tolerance=float(document["tolerance"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"cannot read self-test references {path} ({type(exc).__name__}: {exc})"
        raise ModelError(msg) from exc
    if references.tags.shape != (SELF_TEST_WINDOWS, len(card.labels)):
        msg = f"self-test references {path} hold tags of shape {references.tags.shape}"
        raise ModelError(msg)
    return references


def reference_document(card: ModelCard, tags: np.ndarray, *, command: str) -> dict:
    """The JSON document of `selftest/<model>.json` (written by the tool)."""
    return {
        "schema": REFERENCE_SCHEMA,
        "model": card.name,
        "onnx_sha256": card.sha256,
        "engine": "onnxruntime fp32, CPU, full windows",
        "input": (f"the first {SELF_TEST_WINDOWS} windows of streamclf/data/clip.ogg at a hop "
                  f"of {SELF_TEST_HOP_FRAMES} frames"),
        "tolerance": TAGS_TOLERANCE,
        "made_by": command,
        "tags": [[round(float(v), 7) for v in row] for row in tags],
    }


def run_self_test(runner, windows: list[Window]) -> dict[str, np.ndarray]:
    """`runner`'s outputs on `windows`, one call each as the engine worker makes them."""
    try:
        outputs = [runner.run([(SELF_TEST_STREAM, w)]) for w in windows]
    finally:
        runner.reset(SELF_TEST_STREAM)
    return {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}


def checked_runner(runner, card: ModelCard, *, forced: bool, fallback: Callable[[], object]):
    """`runner` if it passes the self-test; else, unless `forced`, the CPU runner `fallback()`
    makes (itself tested: a model that fails on ONNX Runtime too is an EngineError)."""
    references = load_references(card)
    if references is None:
        return runner
    windows = self_test_windows()
    problem = outputs_problem(run_self_test(runner, windows), references.tags,
                              tolerance=references.tolerance)
    engine = f"{runner.info.name} ({runner.info.device}, {runner.info.precision})"
    if not problem:
        log.info("engine_self_test_passed", model=card.name, engine=engine,
                 windows=len(windows))
        return runner
    runner.close()
    if forced:
        msg = f"{card.name} on {engine} failed its start-up self-test: {problem}"
        raise EngineError(msg)
    log.error("engine_self_test_failed", model=card.name, engine=engine, problem=problem,
              fallback="onnxruntime on the CPU")
    replacement = fallback()
    replacement.warmup()
    problem = outputs_problem(run_self_test(replacement, windows), references.tags,
                              tolerance=references.tolerance)
    if problem:
        replacement.close()
        msg = f"{card.name} fails its start-up self-test on ONNX Runtime too: {problem}"
        raise EngineError(msg)
    log.info("engine_self_test_passed", model=card.name, engine="onnxruntime (fallback)",
             windows=len(windows))
    return replacement
