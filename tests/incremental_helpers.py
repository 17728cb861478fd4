"""Shared pieces of the incremental-inference tests: the clip's log-mel and full-window
references."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from streamclf.backends.runner import FullWindowRunner
from streamclf.features.framer import Window
from streamclf.features.mel import WINDOW_FRAMES

TOLERANCE = {"tags": 1e-4, "embedding": 1e-5}  # as streamclf.train.split.SPLIT_TOLERANCE


def window_at(logmel: np.ndarray, start: int, index: int = 0) -> Window:
    """The window of `logmel` [F, 96] starting at frame `start`, as the framer would emit it."""
    frames = np.array(logmel[start : start + WINDOW_FRAMES])
    return Window(index, start, frames, start * 0.016, (start + WINDOW_FRAMES) * 0.016, -20.0,
                  math.nan)


def windows_at(logmel: np.ndarray, *, hop: int, first: int = 0,
               count: int | None = None) -> list[Window]:
    """Windows of `logmel` every `hop` frames from `first` (all that fit, or `count`)."""
    starts = range(first, logmel.shape[0] - WINDOW_FRAMES + 1, hop)
    return [window_at(logmel, s, i) for i, s in enumerate(starts[:count])]


def assert_same_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Every tag and embedding value of every window within TOLERANCE."""
    for name in ("tags", "embedding"):
        assert got[name].shape == want[name].shape, name
        err = float(np.abs(got[name] - want[name]).max()) if got[name].size else 0.0
        assert err <= TOLERANCE[name], f"{name} differs by {err:.3g}"


def reference(full: FullWindowRunner, windows: Sequence[Window]) -> dict[str, np.ndarray]:
    """Full-window outputs of `windows`, in order."""
    return full.run([("ref", w) for w in windows])
