"""Tracks: one stream cut at its title changes, each track summed up by the genre of its windows.

A station thinks in tracks, not windows. `TrackSegmenter` follows one stream: `push` adds a
window's genre probabilities to the open track, `boundary` closes it and opens the next. The
track's genre is the arg-max of its windows' mean genre probabilities (silent windows left out),
its confidence that mean: the whole track votes, not the last window. The pipeline resets the
smoother at each boundary, so the new track's published genre is not dragged by the old one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamclf.smoothing import SILENCE


@dataclass(frozen=True)
class TrackSummary:
    """A closed track: its title, start and end (stream s), genre, confidence, window count."""

    title: str
    start_s: float
    end_s: float
    genre: str
    confidence: float
    windows: int

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def track_genre(mean_probs: np.ndarray, genres: Sequence[str]) -> tuple[str, float]:
    """(genre, probability) of the best of a track's mean genre probabilities [n_genres]."""
    best = int(np.argmax(mean_probs))
    return genres[best], float(mean_probs[best])


class TrackSegmenter:
    """The open track of one stream (engine worker thread): windows in, summaries out."""

    def __init__(self, genres: Sequence[str]) -> None:
        self.genres = tuple(genres)
        self.title: str | None = None  # None: no track open yet
        self._start_s = 0.0
        self._sum = np.zeros(len(self.genres))
        self._voting = 0
        self._windows = 0

    def push(self, genre_probs: np.ndarray, *, silence: bool) -> None:
        """Add one window (probabilities of `genres`) to the open track, if one is open."""
        if self.title is None:
            return
        self._windows += 1
        if not silence:
            self._sum += genre_probs
            self._voting += 1

    def boundary(self, t_s: float, title: str) -> TrackSummary | None:
        """Close the open track at stream time `t_s` (its summary) and open one titled `title`."""
        closed = self.close(t_s)
        self.title = title
        self._start_s = t_s
        self._sum[:] = 0.0
        self._voting = self._windows = 0
        return closed

    def close(self, t_s: float) -> TrackSummary | None:
        """The open track's summary, ended at `t_s`; None when no track is open."""
        if self.title is None:
            return None
        if self._voting:
            genre, confidence = track_genre(self._sum / self._voting, self.genres)
        else:
            genre, confidence = SILENCE, 0.0
        summary = TrackSummary(self.title, self._start_s, max(t_s, self._start_s), genre,
                               confidence, self._windows)
        self.title = None
        return summary
