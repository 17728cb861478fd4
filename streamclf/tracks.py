"""Tracks: one stream cut at its boundaries, each track summed up by the genre of its windows.

A station thinks in tracks, not windows. `TrackSegmenter` follows one stream: `push` adds a
window's genre probabilities to the open track, `boundary` closes it and opens the next. The
track's genre is the arg-max of its windows' mean genre probabilities (silent windows left out;
"unknown" where that family is not among the published genres), its confidence that mean:
the whole track votes, not the last window. The pipeline resets the smoother at each boundary,
so the new track's published genre is not dragged by the old one's.

A boundary may come late: a title arrives while the windows that straddle it are already
counted, and the audio detector (`streamclf.boundaries`) decides a boundary a dozen windows
after it. Each window belongs to the track in which it ends, so `boundary` moves the open
track's last windows that end after the boundary into the new track; the segmenter keeps the
last `late_windows` windows apart for that and folds older ones into the track's sum.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamclf.smoothing import SILENCE, UNKNOWN


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


@dataclass(frozen=True, slots=True)
class _Window:
    t_end_s: float
    genre_probs: np.ndarray
    silence: bool


def track_genre(mean_probs: np.ndarray, genres: Sequence[str],
                published: Sequence[str] | None = None) -> tuple[str, float]:
    """(genre, probability) of the best of a track's mean genre probabilities [n_genres];
    "unknown" (with that probability) when the best is not among `published` (default: all)."""
    best = int(np.argmax(mean_probs))
    if published is not None and genres[best] not in published:
        return UNKNOWN, float(mean_probs[best])
    return genres[best], float(mean_probs[best])


class TrackSegmenter:
    """The open track of one stream (engine worker thread): windows in, summaries out.

    `late_windows`: how many of the open track's last windows a late boundary can still move to
    the next track (a boundary further back than that keeps them in the old one)."""

    def __init__(self, genres: Sequence[str], published: Sequence[str] | None = None, *,
                 late_windows: int = 4) -> None:
        self.genres = tuple(genres)
        self.published = self.genres if published is None else tuple(published)
        self.title: str | None = None  # None: no track open yet
        self.last_end_s = 0.0  # the end of the last window pushed, stream s
        self.start_s = 0.0
        self._recent: collections.deque[_Window] = collections.deque()
        self._late_windows = late_windows
        self._sum = np.zeros(len(self.genres))  # of the voting windows older than `_recent`
        self._voting = 0
        self._windows = 0  # older than `_recent`

    def push(self, genre_probs: np.ndarray, *, t_end_s: float, silence: bool) -> None:
        """Add one window (probabilities of `genres`, its end) to the open track, if one is open."""
        self.last_end_s = t_end_s
        if self.title is None:
            return
        self._recent.append(_Window(t_end_s, np.asarray(genre_probs, dtype=np.float64), silence))
        if len(self._recent) > self._late_windows:
            self._settle(self._recent.popleft())

    def _settle(self, window: _Window) -> None:
        self._windows += 1
        if not window.silence:
            self._sum += window.genre_probs
            self._voting += 1

    def boundary(self, t_s: float, title: str) -> TrackSummary | None:
        """Close the open track at stream time `t_s` (its summary) and open one titled `title`;
        the open track's kept windows that end after `t_s` go to the new one."""
        t_s = max(t_s, self.start_s) if self.title is not None else t_s
        moved = [w for w in self._recent if w.t_end_s > t_s]
        self._recent = collections.deque(w for w in self._recent if w.t_end_s <= t_s)
        closed = self.close(t_s)
        self.title = title
        self.start_s = t_s
        self._recent.extend(moved)
        return closed

    def close(self, t_s: float | None = None) -> TrackSummary | None:
        """The open track's summary, ended at `t_s` (default: the end of the last window);
        None when no track is open."""
        if self.title is None:
            return None
        for window in self._recent:
            self._settle(window)
        if self._voting:
            genre, confidence = track_genre(self._sum / self._voting, self.genres,
                                              self.published)
        else:
            genre, confidence = SILENCE, 0.0
        end_s = self.last_end_s if t_s is None else t_s
        summary = TrackSummary(self.title, self.start_s, max(end_s, self.start_s), genre,
                               confidence, self._windows)
        self.title = None
        self._recent.clear()
        self._sum[:] = 0.0
        self._voting = self._windows = 0
        return summary
