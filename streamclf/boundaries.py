"""Track boundaries from the audio alone: novelty between the embeddings before and after a point.

For sources that name no tracks (sound cards, files). Each window's embedding (the model's
penultimate layer) is L2-normalised; the novelty at the end of window i is the cosine distance
between the mean of the `context` windows ending at or before it and the mean of the `context`
windows starting at or after it (with 3 s windows on a 1 s hop, window i + 3 is the first that
holds no audio from before). A boundary is a novelty peak over `threshold` that is the highest
within `radius` windows on each side. Deciding needs the windows after the point, so a boundary
is known `(WINDOW_HOPS - 1 + context + radius)` hops after it: the decision delay measured in
docs/tracks.md, with the F-measure on joined real tracks (tools/track_boundaries.py).

`novelty_curve` and `pick_peaks` are the offline functions; `BoundaryDetector` is the same
computation on a stream, window by window, and gives the same boundaries.
"""

from __future__ import annotations

import collections

import numpy as np

WINDOW_HOPS = 3  # windows that overlap a point: 3 s window / 1 s hop
CONTEXT_WINDOWS = 6  # the daemon's detector: the look measured in docs/tracks.md
RADIUS_WINDOWS = 4
THRESHOLD = 0.42  # the best mean F on the calib split (tools/track_boundaries.py)
# The embedding units the threshold was measured on, per model: MSD_musicnn's 200, which
# fused_musicnn carries as its units 200..399 (the same numbers: tests/test_tracks_audio.py).
# Another model's embeddings have distances on another scale: no detector for it.
MEASURED_UNITS = {"MSD_musicnn": slice(0, 200), "fused_musicnn": slice(200, 400)}


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero). [n, d] → [n, d] float64."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cos(a, b); 0 when either is zero."""
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 0.0 if denominator == 0 else 1.0 - float(a @ b) / denominator


def novelty_curve(features: np.ndarray, *, context: int, gap: int = WINDOW_HOPS) -> np.ndarray:
    """Novelty at the end of each window [n]: distance between the mean of `context` windows up to
    and including i and of `context` windows from i + gap on; nan where either side is short."""
    unit = normalise(features)
    n = len(unit)
    novelty = np.full(n, np.nan)
    for i in range(context - 1, n - gap - context + 1):
        before = unit[i - context + 1 : i + 1].mean(axis=0)
        after = unit[i + gap : i + gap + context].mean(axis=0)
        novelty[i] = cosine_distance(before, after)
    return novelty


def pick_peaks(novelty: np.ndarray, *, threshold: float, radius: int) -> np.ndarray:
    """Indices i with novelty[i] > threshold and the highest within ±radius (the first of equal
    highs); nan counts as no peak and never blocks one."""
    peaks = []
    for i, value in enumerate(novelty):
        if not value > threshold:
            continue
        neighbourhood = novelty[max(0, i - radius) : i + radius + 1]
        if value >= np.nanmax(neighbourhood) and not np.any(
                novelty[max(0, i - radius) : i] == value):
            peaks.append(i)
    return np.array(peaks, dtype=np.intp)


def detector_for(model: str) -> BoundaryDetector | None:
    """The daemon's detector for a model's embeddings; None when none was measured for it."""
    units = MEASURED_UNITS.get(model)
    if units is None:
        return None
    return BoundaryDetector(context=CONTEXT_WINDOWS, threshold=THRESHOLD, radius=RADIUS_WINDOWS,
                            units=units)


class BoundaryDetector:
    """`novelty_curve` + `pick_peaks` on a stream: push each window's embedding and end time, get
    the boundaries decided by it, each `delay_windows` windows after the window it ends.

    Equal to the offline functions, except that a peak within the last `radius` novelty values
    of a stream that ends is never decided (the windows that would confirm it never come)."""

    def __init__(self, *, context: int, threshold: float, radius: int,
                 gap: int = WINDOW_HOPS, units: slice = slice(None)) -> None:
        """`units`: the part of each pushed embedding it looks at."""
        self.context, self.threshold, self.radius, self.gap = context, threshold, radius, gap
        self.units = units
        self.delay_windows = gap - 1 + context + radius
        self.reset()

    def reset(self) -> None:
        """Forget everything (a gap in the stream, a new source)."""
        span = self.gap + 2 * self.context - 1  # windows one novelty value needs
        self._features: collections.deque[np.ndarray] = collections.deque(maxlen=span)
        self._ends: collections.deque[float] = collections.deque(maxlen=span)
        # (novelty, time) of the last 2·radius + 1 points; before the stream, and for the first
        # context - 1 points (no full context before them), nan as in `novelty_curve`
        self._recent: collections.deque[tuple[float, float]] = collections.deque(
            [(np.nan, np.nan)] * (self.radius + self.context - 1), maxlen=2 * self.radius + 1)

    def push(self, embedding: np.ndarray, t_end_s: float) -> list[float]:
        """Add one window; returns the boundary times (window ends) decided now: [] or [t]."""
        self._features.append(normalise(embedding[self.units]))
        self._ends.append(t_end_s)
        if len(self._features) < self._features.maxlen:
            return []
        before = np.mean(list(self._features)[: self.context], axis=0)
        after = np.mean(list(self._features)[self.context - 1 + self.gap :], axis=0)
        self._recent.append((cosine_distance(before, after), self._ends[self.context - 1]))
        if len(self._recent) < self._recent.maxlen:
            return []
        values = np.array([value for value, _ in self._recent])
        if self.radius in pick_peaks(values, threshold=self.threshold, radius=self.radius):
            return [self._recent[self.radius][1]]
        return []
