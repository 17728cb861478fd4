"""The engine worker: one thread for its streams (all of them, or its share where `[engine]
workers` asks for several), from ready windows to feed messages.

It batches the windows of its streams through its own runner, then per window smooths, decides
content and tracks, and hands plain results to `streamclf.feed.messages`; it publishes through
the fan-out, which the workers share, and never calls back into the pipeline.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Iterator

import numpy as np
import structlog

from streamclf.alarms import AlarmEvent
from streamclf.backends.runner import WindowRunner
from streamclf.config import FeedConfig
from streamclf.content import (
    MusicEvidence,
    window_content,
)
from streamclf.features.framer import Window
from streamclf.feed import messages
from streamclf.feed.fanout import FeedFanout
from streamclf.metrics import MetricsServer
from streamclf.models.card import ModelCard
from streamclf.streams import Stream
from streamclf.thread_names import name_this_thread

log = structlog.get_logger(__name__)

LATENCY_HISTORY = 512  # windows kept for the p50/p99 engine latency in status messages


class LatencyWindow:
    """The last few engine latencies in a fixed array, for p50/p99 in status messages."""

    def __init__(self, size: int = LATENCY_HISTORY) -> None:
        self._ms = np.full(size, np.nan)
        self._next = 0

    def add(self, ms: float) -> None:
        self._ms[self._next % self._ms.size] = ms
        self._next += 1

    def percentiles(self) -> tuple[float, float]:
        if self._next == 0:
            return (math.nan, math.nan)
        seen = self._ms[: min(self._next, self._ms.size)]
        p50, p99 = np.percentile(seen, [50, 99])
        return (float(p50), float(p99))


class EngineWorker(threading.Thread):
    """Batches ready windows of its streams through its runner, smooths, publishes.

    It is given its streams (their window queues notify its `ready`), its runner and the feed
    fan-out, and hands plain results to `streamclf.feed.messages`; it never calls back into the
    pipeline. `drained` holds one Event per engine worker, this one's at `index`: each sets its
    own once its streams have ended and their last windows are published, and `all_finished` is
    set once every worker's is (a worker cannot see another's window in progress).
    """

    def __init__(self, *, streams: list[Stream], runner: WindowRunner, feed: FeedFanout,
                 card: ModelCard, genres: tuple[str, ...], families: tuple[str, ...],
                 feed_config: FeedConfig, metrics: MetricsServer | None,
                 stop: threading.Event, ready: threading.Condition,
                 all_finished: threading.Event, drained: list[threading.Event], index: int,
                 started: float, music_evidence: MusicEvidence | None = None) -> None:
        super().__init__(name="engine" if len(drained) == 1 else f"engine-{index}", daemon=True)
        self._streams = streams
        self._drained = drained
        self._index = index
        self._runner = runner
        self._feed = feed
        self._card = card
        self._genres = genres
        self._family_index = np.array([card.labels.index(g) for g in families], dtype=np.intp)
        self.feed_config = feed_config  # replaced on reload (top_k, probs, status interval)
        self._metrics = metrics
        self._music_evidence = music_evidence  # None when [content] is off
        self._stopping = stop
        self._ready = ready
        self._all_finished = all_finished
        self._started_at = started
        self.heartbeat = time.monotonic()
        self.engine_latency = LatencyWindow()
        self._failure_burst = False
        self._exit_lock = threading.Lock()
        self._exited = False
        self._close_on_exit: WindowRunner | None = None

    def close_when_idle(self, runner: WindowRunner) -> bool:
        """Close `runner` now if this worker never started or has ended, else as it ends:
        never while an inference call may still be using the engine's buffers."""
        with self._exit_lock:
            if self.ident is not None and not self._exited:
                self._close_on_exit = runner
                return False
        runner.close()
        return True

    def run(self) -> None:
        name_this_thread()
        try:
            self._work()
        finally:
            with self._exit_lock:
                self._exited = True
                runner, self._close_on_exit = self._close_on_exit, None
            if runner is not None:
                runner.close()
                log.info("engine_closed_after_stop")

    def _work(self) -> None:
        next_status = time.monotonic()
        while not self._stopping.is_set():
            with self._ready:
                batch = self._take_windows()
                if not batch:
                    self._ready.wait(timeout=min(0.2, max(0.0, next_status - time.monotonic())))
                    batch = self._take_windows()
            self.heartbeat = time.monotonic()
            # one engine call at a time, so that stop() finds the worker out of the engine soon
            step = self._runner.max_batch
            for start in range(0, len(batch), step):
                if self._stopping.is_set():
                    break
                self._infer_and_publish(batch[start : start + step])
            for stream in self._streams:
                self._publish_alarms(stream)
            if time.monotonic() >= next_status:
                self._publish_status(final=False)
                next_status = time.monotonic() + self.feed_config.status_interval_s
            for stream in self._streams:
                if stream.finished.is_set() and not len(stream.windows):
                    self._end_track(stream)
            if all(s.finished.is_set() and not len(s.windows) for s in self._streams):
                self._drained[self._index].set()
                if all(event.is_set() for event in self._drained):
                    self._all_finished.set()
        for stream in self._streams:
            self._end_track(stream)
        self._publish_status(final=True)

    def _take_windows(self) -> list[tuple[Stream, Window]]:
        """The ready windows of every stream, none from both sides of a gap; a stream's stages
        here restart before its first window after one."""
        batch = []
        for stream in self._streams:
            windows, after_gap = stream.windows.take_all()
            if after_gap:
                stream.restart_window_stages(self._runner)
            batch.extend((stream, window) for window in windows)
        return batch

    def _infer_and_publish(self, batch: list[tuple[Stream, Window]]) -> None:
        started = time.monotonic()
        try:
            outputs = self._runner.run([(stream.stream_id, window) for stream, window in batch])
        except Exception as exc:  # noqa: BLE001
            # an engine fault must not stop the daemon: count, carry on
            if self._stopping.is_set():  # stop() interrupted the call: the tail of a stop, no fault
                log.info("engine_call_interrupted_at_stop", windows=len(batch))
                return
            for stream, _ in batch:
                stream.engine_failures += 1
            if not self._failure_burst:
                log.error("engine_batch_failed", windows=len(batch), error=str(exc))
            self._failure_burst = True
            return
        self._failure_burst = False
        per_window_ms = (time.monotonic() - started) * 1000.0 / len(batch)
        feed = self.feed_config
        for row, (stream, window) in enumerate(batch):
            self.engine_latency.add(per_window_ms)
            probs = outputs["tags"][row]
            if stream.titles is not None:
                self._follow_titles(stream, window)
            elif stream.boundaries is not None and stream.tracks.title is None:
                self._cut_track(stream, window.t_start_s, "", source="audio")  # its first track
            state = stream.smoother.update(probs, window.t_end_s, window.level_dbfs)
            stream.smoothed = state.smoothed
            if self._metrics is not None:
                self._metrics.observe_inference(stream.stream_id, per_window_ms / 1000.0)
            if stream.tracks is not None:
                stream.tracks.push(probs[self._family_index], t_end_s=window.t_end_s,
                                   silence=state.silence)
            content = None if stream.content is None else window_content(
                stream.voice, stream.content, self._music_evidence, t0_s=window.t_start_s,
                t1_s=window.t_end_s, embedding=outputs["embedding"][row], silent=state.silence)
            genre, previous = (state.genre, state.previous) if content is None \
                else stream.talk.apply(state.genre, content.content)
            self._feed.emit(messages.genre_message(
                stream.stream_id, window, probs, state, labels=self._card.labels,
                model=self._card.name, engine=self._runner.info.name, top_k=feed.top_k,
                publish_probs=feed.publish_probs, genre=genre, content=content))
            if genre != previous or (content is not None and content.changed):
                self._feed.emit(messages.change_message(stream.stream_id, window, state,
                                                        genre=genre, previous=previous,
                                                        content=content))
            if stream.boundaries is not None:
                for t_s in stream.boundaries.push(outputs["embedding"][row], window.t_end_s):
                    self._cut_track(stream, t_s, "", source="audio")

    def _follow_titles(self, stream: Stream, window: Window) -> None:
        """Cut the stream's track at each title that arrived before this window's audio did.

        The title's arrival (monotonic) becomes stream time through the window's own arrival, so
        the boundary falls where the audio was when the title came; the smoother starts afresh.
        """
        for arrived, title in stream.titles.take_before(window.arrival):
            t_s = max(window.t_start_s, window.t_end_s - (window.arrival - arrived))
            self._cut_track(stream, t_s, title, source="icy")

    def _cut_track(self, stream: Stream, t_s: float, title: str, *, source: str) -> None:
        """End the open track at `t_s`, start the next, and start the smoother afresh; `source`
        found the boundary ("icy", "audio"). A late boundary takes the windows since then along."""
        closed = stream.tracks.boundary(t_s, title)
        if closed is not None:
            self._feed.emit(messages.track_end_message(stream.stream_id, closed, source))
        self._feed.emit(messages.track_start_message(stream.stream_id, stream.tracks.start_s,
                                                     title, source))
        stream.smoother.start_track()

    def _end_track(self, stream: Stream) -> None:
        """The stream ended or the daemon stops: its open track ends at its last window."""
        closed = stream.tracks.close() if stream.tracks is not None else None
        if closed is not None:
            self._feed.emit(messages.track_end_message(stream.stream_id, closed, "end"))

    def _publish_alarms(self, stream: Stream) -> None:
        """Publish and log the alarms of a stream that started or ended since the last call."""
        latest = self._feed.latest.get(stream.stream_id)
        health = stream.health.update(
            now_s=time.monotonic(), source_state=stream.source.state,
            last_audio_s=stream.audio_at,
            latency_ms=latest.latency_ms if latest else 0.0,
            dropped_windows=stream.windows.dropped + stream.engine_failures)
        for event in [*health, *_drain(stream.alarm_events)]:
            log.warning("alarm_started" if event.active else "alarm_ended", stream=stream.stream_id,
                        alarm=event.kind, value=round(event.value, 2), threshold=event.threshold,
                        detail=event.detail)
            self._feed.emit(messages.alarm_message(stream.stream_id, event))

    def _publish_status(self, *, final: bool) -> None:
        p50, p99 = self.engine_latency.percentiles()
        publisher, outputs = self._feed.publisher, self._feed.outputs
        for stream in self._streams:
            levels = stream.levels
            self._feed.emit(messages.status_message(
                stream.stream_id, source=stream.source, ring_overruns=stream.ring.overrun_samples,
                dropped_windows=stream.windows.dropped + stream.engine_failures,
                feed_drops=publisher.drops if publisher else 0, engine_p50_ms=p50,
                engine_p99_ms=p99, windows=stream.smoother.windows, labels=self._card.labels,
                genres=self._genres, model=self._card.name, engine=self._runner.info.name,
                final=final, stalled=stream.stalled(time.monotonic()),
                alarms=stream.health.active + (levels.alarms.active if levels is not None else []),
                loudness=levels.latest if levels is not None else None,
                outputs=outputs.health() if outputs else None,
                uptime_s=time.monotonic() - self._started_at))


def _drain(events: collections.deque[AlarmEvent]) -> Iterator[AlarmEvent]:
    """Take events off a deque that another thread appends to, oldest first."""
    while events:
        yield events.popleft()
