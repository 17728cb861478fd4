"""Feed messages built from plain per-window results: what the engine worker hands over.

The engine worker knows windows, tag probabilities, smoother states, track summaries, alarm
events and counters; these functions turn them into the wire types of `streamclf.feed.schema`,
so the worker never asks the pipeline to build a message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from streamclf.alarms import AlarmEvent
from streamclf.content import LABELS as CONTENT_LABELS
from streamclf.content import ContentState
from streamclf.features.framer import Window
from streamclf.feed.schema import (
    AlarmMessage,
    ChangeMessage,
    GenreMessage,
    StatusMessage,
    TrackMessage,
)
from streamclf.loudness import LoudnessReading
from streamclf.smoothing import SmoothingState
from streamclf.tracks import TrackSummary


def genre_message(stream_id: str, window: Window, probs: np.ndarray, state: SmoothingState, *,
                  labels: Sequence[str], model: str, engine: str, top_k: int,
                  publish_probs: bool, genre: str | None = None,
                  content: ContentState | None = None) -> GenreMessage:
    """One window's result: the smoothed genre (or `genre`, the talk gate's), the top tags of
    `probs` [n_tags] by label, and the window's content when [content] is on."""
    top = np.argsort(probs)[::-1][:top_k]
    return GenreMessage(
        stream=stream_id,
        t0=window.t_start_s,
        t1=window.t_end_s,
        wall=time.time(),
        latency_ms=(time.monotonic() - window.arrival) * 1000.0,
        genre=genre or state.genre,
        confidence=state.confidence,
        raw_genre=state.raw_genre,
        top=[[labels[i], float(probs[i])] for i in top],
        level_dbfs=window.level_dbfs,
        silence=state.silence,
        model=model,
        engine=engine,
        probs=[float(x) for x in probs] if publish_probs else None,
        candidates=state.candidates,
        content=content.content if content else None,
        raw_content=content.raw_content if content else None,
        content_probs=content_scores(content),
    )


def content_scores(content: ContentState | None) -> list[list[str | float]] | None:
    """[[label, p], …] of a window's content probabilities, for the feed."""
    if content is None:
        return None
    return [[label, float(p)] for label, p in zip(CONTENT_LABELS, content.probs, strict=True)]


def change_message(stream_id: str, window: Window, state: SmoothingState, *,
                   genre: str | None = None, previous: str | None = None,
                   content: ContentState | None = None) -> ChangeMessage:
    """A change of the published genre (`genre`/`previous` when the talk gate decides it) or
    of the held content."""
    return ChangeMessage(stream=stream_id, wall=time.time(), t1=window.t_end_s,
                         genre=genre or state.genre,
                         previous=state.previous if previous is None else previous,
                         confidence=state.confidence,
                         content=content.content if content else None,
                         previous_content=content.previous if content else None)


def track_start_message(stream_id: str, t_s: float, title: str, source: str) -> TrackMessage:
    """`source` found the boundary: "icy" (a new title) or "audio" (the boundary detector)."""
    return TrackMessage(stream=stream_id, event="start", wall=time.time(), t=t_s, title=title,
                        source=source)


def track_end_message(stream_id: str, track: TrackSummary, source: str) -> TrackMessage:
    """`source` ended the track: "icy", "audio", or "end" (the stream ended, the daemon stops)."""
    return TrackMessage(stream=stream_id, event="end", wall=time.time(), t=track.end_s,
                        title=track.title, source=source, genre=track.genre,
                        confidence=track.confidence, duration_s=track.duration_s,
                        windows=track.windows)


def alarm_message(stream_id: str, event: AlarmEvent) -> AlarmMessage:
    return AlarmMessage(stream=stream_id, wall=time.time(), alarm=event.kind, active=event.active,
                        value=event.value, threshold=event.threshold, detail=event.detail)


def status_message(stream_id: str, *, source, ring_overruns: int, dropped_windows: int,
                   feed_drops: int, engine_p50_ms: float, engine_p99_ms: float, windows: int,
                   labels: Sequence[str], genres: Sequence[str], model: str, engine: str,
                   final: bool, stalled: str | None, alarms: list, loudness: LoudnessReading | None,
                   outputs: list | None, uptime_s: float) -> StatusMessage:
    """A stream's counters and health; `source` is read for its state and xruns."""
    return StatusMessage(
        stream=stream_id,
        wall=time.time(),
        uptime_s=uptime_s,
        device_state=source.state,
        xruns=source.xruns,
        ring_overruns=ring_overruns,
        dropped_windows=dropped_windows,
        feed_drops=feed_drops,
        engine_p50_ms=engine_p50_ms,
        engine_p99_ms=engine_p99_ms,
        windows=windows,
        labels=list(labels),
        genres=list(genres),
        model=model,
        engine=engine,
        final=final,
        stalled=stalled,
        alarms=alarms,
        momentary_lufs=loudness.momentary_lufs if loudness else None,
        short_term_lufs=loudness.short_term_lufs if loudness else None,
        integrated_lufs=loudness.integrated_lufs if loudness else None,
        loudness_range_lu=loudness.range_lu if loudness else None,
        true_peak_dbtp=loudness.true_peak_dbtp if loudness else None,
        outputs=outputs,
    )
