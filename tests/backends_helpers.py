"""Helpers for the engine tests: the real shipped models and real log-mel windows of music."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamclf.models.card import ModelCard, load_model_card

REPO = Path(__file__).resolve().parent.parent
ENGINES = REPO / "engines"
LOGMEL = REPO / "tests" / "fixtures" / "musicnn" / "logmel.npz"
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2


def card(name: str = "MSD_musicnn") -> ModelCard:
    """The card of a real converted model in engines/ (its ONNX sha256 is verified)."""
    return load_model_card(ENGINES / f"{name}.json")


def music_windows(n: int) -> np.ndarray:
    """n distinct float32 [187, 96] windows cut from the clip's real log-mel patches.

    The three stored patches are laid end to end and windows start every 7 frames, so each
    window is real music and no two are equal.
    """
    with np.load(LOGMEL) as fixture:
        frames = np.concatenate(list(fixture["batch"]))  # [561, 96]
    starts = np.arange(n) * 7 % (len(frames) - 187)
    return np.stack([frames[s : s + 187] for s in starts]).astype(np.float32)
