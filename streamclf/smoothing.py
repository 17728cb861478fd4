"""Per-stream smoothing: EMA of tag probabilities, a silence gate, and hysteresis on the genre.

The model answers every hop with fresh, noisy probabilities; a listener wants a genre that holds
through a bridge and changes when the music does. Three small pieces, one state machine each:

- EMA over *all* tags with a time constant in seconds: alpha = 1 - exp(-dt/tau) from the real
  stream-time step between windows, so a 0.5 s hop and a 3 s hop smooth alike.
- Silence gate: a window under `silence_dbfs` is published as "silence" and never enters the EMA
  (the model's opinion of silence is noise).
- Hysteresis on the genre subset of the smoothed tags: the held genre changes only when
  another genre leads it by `switch_margin` for at least `min_dwell_s` of stream time.
- A confidence gate with the same margin and dwell on the held genre's own score: it is published
  only while that score is at least `unknown_threshold`, so a genre under the threshold is never
  published (it turns "unknown" in the window it falls under); back from "unknown" it needs
  `unknown_threshold + switch_margin` for `min_dwell_s`, so a score hovering near the threshold
  does not flip between "unknown" and the genre. A validated head gives each genre its own
  threshold (`thresholds`, from its card), and a family it decides among but cannot name
  reliably (not `published`) never opens the gate: its music reads "unknown", with the family
  first among the candidates, never as the nearest genre that is published.

`confidence` is the smoothed probability of the published genre (musicnn's tags are independent
sigmoids, so genre probabilities need not sum to 1); for "unknown" it is that of the best
candidate, for "silence" 0. Changes are reported only on transitions (`changed`), including to and
from "silence" and "unknown".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streamclf.config import SmoothingConfig
from streamclf.errors import ModelError
from streamclf.models.card import ModelCard

SILENCE = "silence"
UNKNOWN = "unknown"
N_CANDIDATES = 3


def ema_alpha(*, dt_s: float, time_constant_s: float) -> float:
    """Weight of the new value for a step of `dt_s` seconds: 1 - exp(-dt/tau); tau 0 → 1."""
    if time_constant_s <= 0:
        return 1.0
    return 1.0 - math.exp(-max(dt_s, 0.0) / time_constant_s)


@dataclass(frozen=True, slots=True)
class SmoothingState:
    """What one window publishes. `instant` / `smoothed`: float32 [n_tags] (smoothed is a copy)."""

    genre: str
    confidence: float
    raw_genre: str
    silence: bool
    changed: bool
    previous: str  # the genre published before this window ("" before the first)
    candidates: list[list[str | float]] | None  # [[genre, p], …] top 3 when genre is "unknown"
    instant: np.ndarray
    smoothed: np.ndarray


class Hysteresis:
    """Holds a choice among n scores; switches only after a lead of `margin` held for `dwell_s`."""

    def __init__(self, *, margin: float, dwell_s: float) -> None:
        self.margin = margin
        self.dwell_s = dwell_s
        self.reset()

    def reset(self) -> None:
        self.held: int | None = None
        self._candidate: int | None = None
        self._since_s = 0.0

    def step(self, scores: np.ndarray, t_s: float) -> int:
        """Feed scores [n] at stream time `t_s`; return the held index. The first step adopts the
        leader at once (nothing to hold yet)."""
        leader = int(np.argmax(scores))
        if self.held is None:
            self.held = leader
        elif leader == self.held or scores[leader] - scores[self.held] < self.margin:
            self._candidate = None
        elif self._candidate != leader or t_s < self._since_s:
            self._candidate, self._since_s = leader, t_s
        if self._candidate is not None and t_s - self._since_s >= self.dwell_s:
            self.held, self._candidate = self._candidate, None
        return self.held


class ConfidenceGate:
    """Whether the held genre may be published: closes at once when its score falls under
    `threshold`, opens again only on `threshold + margin` held for `dwell_s`.

    A genre that has just become the held one (or the first) is judged on `threshold` alone: it
    already earned its place through the genre hysteresis, and a second dwell would only delay it.
    """

    def __init__(self, *, threshold: float, margin: float, dwell_s: float) -> None:
        self.threshold = threshold
        self.margin = margin
        self.dwell_s = dwell_s
        self.reset()

    def reset(self) -> None:
        self.open = False
        self._since_s: float | None = None

    def step(self, score: float, t_s: float, *, new_genre: bool) -> bool:
        """Feed the held genre's score at stream time `t_s`; return whether it may be published."""
        if new_genre or self.open:
            self.open, self._since_s = score >= self.threshold, None
        elif score < self.threshold + self.margin:
            self._since_s = None
        else:
            if self._since_s is None or t_s < self._since_s:
                self._since_s = t_s
            if t_s - self._since_s >= self.dwell_s:
                self.open, self._since_s = True, None
        return self.open


def card_thresholds(config: SmoothingConfig,
                    card: ModelCard) -> tuple[SmoothingConfig, dict[str, float]]:
    """The smoothing to run with `card`'s model and each published genre's own threshold: a
    threshold set in the config holds for every genre; else the card's per genre, and its
    single one (or the default) for the rest (docs/config.md)."""
    resolved = config.with_card_threshold(card.unknown_threshold)
    return resolved, {} if config.unknown_threshold is not None else card.genre_thresholds


class Smoother:
    """EMA + silence gate + hysteresis + unknown threshold for one stream (engine worker thread)."""

    def __init__(self, config: SmoothingConfig, *, labels: Sequence[str], genres: Sequence[str],
                 published: Sequence[str] | None = None,
                 thresholds: Mapping[str, float] | None = None) -> None:
        """`genres`: what the decision picks among; `published`: those of them that may be the
        published genre (default: all), each at its own threshold in `thresholds`, else at the
        config's `unknown_threshold`."""
        published = tuple(genres) if published is None else tuple(published)
        missing = [g for g in (*genres, *published) if g not in labels]
        if missing or not genres:
            msg = f"genres {missing or '[]'} are not among the model's {len(labels)} labels"
            raise ModelError(msg)
        self.labels = tuple(labels)
        self.genres = tuple(genres)
        self.published = published
        self._genre_index = np.array([self.labels.index(g) for g in genres], dtype=np.intp)
        self._hysteresis = Hysteresis(margin=config.switch_margin, dwell_s=config.min_dwell_s)
        self._gate = ConfidenceGate(threshold=0.0, margin=config.switch_margin,
                                    dwell_s=config.min_dwell_s)
        self.reconfigure(config, thresholds or {})
        self.reset()

    def reconfigure(self, config: SmoothingConfig,
                    thresholds: Mapping[str, float] | None = None) -> None:
        """Apply new settings (SIGHUP reload); the average and the held genre carry on.
        `thresholds` None keeps the per-genre thresholds given before."""
        config = config.with_card_threshold(None)  # the pipeline resolves it with its card first
        self.config = config
        if thresholds is not None:
            self._thresholds = dict(thresholds)
        self._hysteresis.margin = self._gate.margin = config.switch_margin
        self._hysteresis.dwell_s = self._gate.dwell_s = config.min_dwell_s
        self._gate_thresholds = np.array(
            [self._thresholds.get(g, config.unknown_threshold) if g in self.published
             else math.inf for g in self.genres])

    def reset(self) -> None:
        self._average: np.ndarray | None = None
        self._last_t_s = 0.0
        self._published = ""
        self._hysteresis.reset()
        self._gate.reset()
        self.windows = 0
        self.non_finite = 0  # windows refused for NaN or infinite probabilities

    def start_track(self) -> None:
        """A new track: forget the average and the held genre, so the old track's genre does not
        drag the new one's; the window count and the genre published last stay."""
        self._average = None
        self._hysteresis.reset()

    def update(self, probs: np.ndarray, t_end_s: float, level_dbfs: float) -> SmoothingState:
        """One window's tag probabilities [n_tags], its end in stream seconds, and its level."""
        instant = np.asarray(probs, dtype=np.float32)
        if instant.shape != (len(self.labels),):
            msg = (f"engine gave {instant.shape} tag probabilities, the model card has "
                   f"{len(self.labels)}")
            raise ModelError(msg)
        self.windows += 1
        silence = not level_dbfs >= self.config.silence_dbfs  # nan counts as silence
        if not silence and not np.isfinite(instant).all():
            # an engine fault (an FP16 overflow, say): one NaN would stay in the average for good
            self.non_finite += 1
            return self._held_state(instant)
        if silence:
            genre, confidence, raw, candidates = SILENCE, 0.0, SILENCE, None
        else:
            genre, confidence, raw, candidates = self._decide(instant, t_end_s)
        previous, self._published = self._published, genre
        smoothed = instant.copy() if self._average is None else self._average.copy()
        return SmoothingState(genre=genre, confidence=confidence, raw_genre=raw, silence=silence,
                              changed=genre != previous, previous=previous, candidates=candidates,
                              instant=instant, smoothed=smoothed)

    def _held_state(self, instant: np.ndarray) -> SmoothingState:
        """What stands when a window is refused: the published genre, the average untouched."""
        previous, self._published = self._published, self._published or UNKNOWN
        genre = self._published
        smoothed = np.full_like(instant, np.nan) if self._average is None else self._average.copy()
        held = self.genres.index(genre) if genre in self.genres else None
        confidence = 0.0 if held is None else float(smoothed[self._genre_index[held]])
        return SmoothingState(genre=genre, confidence=confidence, raw_genre=UNKNOWN, silence=False,
                              changed=genre != previous, previous=previous, candidates=None,
                              instant=instant, smoothed=smoothed)

    def _decide(self, instant: np.ndarray, t_s: float) -> tuple[str, float, str, list | None]:
        if self._average is None:
            self._average = instant.copy()
        else:
            alpha = ema_alpha(dt_s=t_s - self._last_t_s,
                              time_constant_s=self.config.time_constant_s)
            self._average *= np.float32(1.0 - alpha)  # this form is exact for alpha 0 and 1
            self._average += np.float32(alpha) * instant
        self._last_t_s = t_s
        scores = self._average[self._genre_index]
        held_before = self._hysteresis.held
        held = self._hysteresis.step(scores, t_s)
        raw = self.genres[int(np.argmax(instant[self._genre_index]))]
        self._gate.threshold = float(self._gate_thresholds[held])
        if not self._gate.step(float(scores[held]), t_s, new_genre=held != held_before):
            order = np.argsort(scores)[::-1][:N_CANDIDATES]
            candidates = [[self.genres[i], float(scores[i])] for i in order]
            return UNKNOWN, float(scores.max()), raw, candidates
        return self.genres[held], float(scores[held]), raw, None
