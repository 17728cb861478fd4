"""The one place where the stages are wired together and their threads started.

Threads (docs/architecture.md): each source pushes into its own ring (PortAudio callback or a
reader thread, owned by the source); one `StreamWorker` per stream turns ring audio into windows;
one `EngineWorker` batches the windows of all streams, runs the engine, smooths and publishes.
The caller's thread (serve/listen) only handles signals, sd_notify and the live view.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import structlog

from streamclf.alarms import AlarmEvent, HealthAlarms, LevelStage
from streamclf.audio.icy import IcyTitleWatcher, is_http_url
from streamclf.audio.resample import Resampler
from streamclf.audio.ring import RingBuffer
from streamclf.audio.sources import open_source
from streamclf.backends.incremental import WindowRunner, load_runner
from streamclf.config import Config
from streamclf.features.framer import LogMelFramer, Window
from streamclf.features.mel import SAMPLE_RATE_HZ, WINDOW_FRAMES, frames_for_seconds
from streamclf.feed.publisher import Publisher
from streamclf.feed.schema import (
    AlarmMessage,
    ChangeMessage,
    GenreMessage,
    Sequencer,
    StatusMessage,
    TrackMessage,
)
from streamclf.loudness import LoudnessMeter
from streamclf.metrics import MetricsServer
from streamclf.models.card import ModelCard, genre_vocabulary, load_model_card
from streamclf.outputs import Outputs
from streamclf.smoothing import Smoother
from streamclf.tracks import TrackSegmenter, TrackSummary

log = structlog.get_logger(__name__)

POLL_S = 0.01  # how often an empty ring is looked at once the next window's audio is due
MAX_IDLE_S = 0.25  # the longest a stream worker sleeps before looking at its ring again
LATENCY_HISTORY = 512  # windows kept for the p50/p99 engine latency in status messages
VIEW_QUEUE_MESSAGES = 256  # messages buffered for the live view before the oldest are dropped
STALL_S = 5.0  # a thread (engine, stream worker, source reader) silent this long counts as stuck


class WindowQueue:
    """Bounded hand-over of windows from one stream worker to the engine worker.

    When the engine falls behind, the oldest window is dropped and counted, so latency stays
    bounded and memory does not grow (docs/reliability.md: overload).
    """

    def __init__(self, capacity: int, ready: threading.Condition) -> None:
        self._windows: collections.deque[Window] = collections.deque()
        self._capacity = capacity
        self._ready = ready
        self.dropped = 0

    def put(self, window: Window) -> None:
        with self._ready:
            if len(self._windows) >= self._capacity:
                self._windows.popleft()
                self.dropped += 1
            self._windows.append(window)
            self._ready.notify()

    def take_all(self) -> list[Window]:
        """Called with the condition held by the engine worker."""
        taken = list(self._windows)
        self._windows.clear()
        return taken

    def __len__(self) -> int:
        return len(self._windows)


@dataclass
class Stream:
    """Everything that belongs to one input stream, from source to smoother."""

    stream_id: str
    source: object
    ring: RingBuffer
    resampler: Resampler
    framer: LogMelFramer
    windows: WindowQueue
    smoother: Smoother
    health: HealthAlarms
    levels: LevelStage | None = None  # None when [loudness] is off
    smoothed: np.ndarray | None = None  # the last window's smoothed tag probabilities
    finished: threading.Event = field(default_factory=threading.Event)
    engine_failures: int = 0
    # Liveness, written by the stream worker: each turn of its loop, and each read that got audio.
    worker_beat: float = field(default_factory=time.monotonic)
    audio_at: float = field(default_factory=time.monotonic)

    def stalled(self, now: float) -> str | None:
        """Which part of this stream is stuck: "worker", "source" (a running source that
        delivers nothing, e.g. a blocked reader) or None. A lost or ended source is no stall:
        it reconnects or ends by itself."""
        if self.finished.is_set():
            return None
        if now - self.worker_beat > STALL_S:
            return "worker"
        if self.source.state == "running" and now - self.audio_at > STALL_S:
            return "source"
        return None

    # Level alarms from the stream worker, waiting for the engine worker to publish them (a
    # deque: append and popleft are thread-safe).
    alarm_events: collections.deque[AlarmEvent] = field(default_factory=collections.deque)
    titles: IcyTitleWatcher | None = None  # http(s) url streams: the ICY title of the track
    tracks: TrackSegmenter | None = None


class StreamWorker(threading.Thread):
    """Ring → resampler → framer → window queue, for one stream; ends when its source ends."""

    def __init__(self, stream: Stream, stop: threading.Event, block_frames: int) -> None:
        super().__init__(name=f"stream-{stream.stream_id}", daemon=True)
        self._stream = stream
        self._stopping = stop
        self._block = np.zeros((block_frames, stream.ring.channels), dtype=np.float32)

    def _idle_s(self) -> float:
        """Sleep until the next window's audio is due, then poll: few wake-ups, no added latency."""
        due_s = self._stream.framer.samples_to_next_window() / SAMPLE_RATE_HZ
        return min(MAX_IDLE_S, max(POLL_S, due_s - POLL_S))

    def run(self) -> None:
        stream = self._stream
        while not self._stopping.is_set():
            n, arrival = stream.ring.read(self._block)
            stream.worker_beat = time.monotonic()
            if n == 0:
                if stream.source.state in ("ended", "failed"):
                    break
                self._stopping.wait(self._idle_s())
                continue
            stream.audio_at = stream.worker_beat
            if stream.levels is not None:
                stream.alarm_events.extend(stream.levels.push(self._block[:n]))
            for window in stream.framer.push(stream.resampler.push(self._block[:n]), arrival):
                stream.windows.put(window)
        if not self._stopping.is_set():
            arrival = time.monotonic()
            for window in stream.framer.push(stream.resampler.flush(), arrival):
                stream.windows.put(window)
            log.info("stream_ended", stream=stream.stream_id, state=stream.source.state)
        stream.finished.set()


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
    """Batches ready windows of all streams through the engine, smooths, publishes.

    It alone owns the PUB socket (a ZeroMQ socket belongs to one thread).
    """

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(name="engine", daemon=True)
        self._p = pipeline
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
        p = self._p
        next_status = time.monotonic()
        while not p.stop_event.is_set():
            with p.ready:
                batch = [(s, w) for s in p.streams for w in s.windows.take_all()]
                if not batch:
                    p.ready.wait(timeout=min(0.2, max(0.0, next_status - time.monotonic())))
                    batch = [(s, w) for s in p.streams for w in s.windows.take_all()]
            self.heartbeat = time.monotonic()
            # one engine call at a time, so that stop() finds the worker out of the engine soon
            step = p.runner.max_batch
            for start in range(0, len(batch), step):
                if p.stop_event.is_set():
                    break
                self._infer_and_publish(batch[start : start + step])
            for stream in p.streams:
                p.publish_alarms(stream)
            if time.monotonic() >= next_status:
                self._publish_status(final=False)
                next_status = time.monotonic() + p.config.feed.status_interval_s
            if all(s.finished.is_set() and not len(s.windows) for s in p.streams):
                p.all_finished.set()
        self._publish_status(final=True)

    def _infer_and_publish(self, batch: list[tuple[Stream, Window]]) -> None:
        p = self._p
        started = time.monotonic()
        try:
            outputs = p.runner.run([(stream.stream_id, window) for stream, window in batch])
        except Exception as exc:  # noqa: BLE001 — an engine fault must not stop the daemon: count, carry on
            if p.stop_event.is_set():  # stop() interrupted the call: the tail of a stop, no fault
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
        for row, (stream, window) in enumerate(batch):
            self.engine_latency.add(per_window_ms)
            probs = outputs["tags"][row]
            if stream.titles is not None:
                p.follow_titles(stream, window)
            state = stream.smoother.update(probs, window.t_end_s, window.level_dbfs)
            stream.smoothed = state.smoothed
            if p.metrics is not None:
                p.metrics.observe_inference(stream.stream_id, per_window_ms / 1000.0)
            if stream.tracks is not None:
                stream.tracks.push(probs[p.genre_index], silence=state.silence)
            message = p.genre_message(stream, window, probs, state)
            p.emit(message)
            if state.changed:
                p.emit(p.change_message(stream, window, state))

    def _publish_status(self, *, final: bool) -> None:
        p = self._p
        p50, p99 = self.engine_latency.percentiles()
        for stream in p.streams:
            p.emit(p.status_message(stream, p50, p99, final=final))


class Pipeline:
    """Sources, workers, engine and feed for one config; start(), stop(), reload()."""

    def __init__(self, config: Config, *, publish: bool = True, view: bool = False,
                 runner_wrapper: Callable[[WindowRunner], WindowRunner] | None = None) -> None:
        """`runner_wrapper` wraps the loaded runner (the reliability tests inject faults so)."""
        self.config = config
        self._runner_wrapper = runner_wrapper
        self.publish = publish
        self.stop_event = threading.Event()
        self.all_finished = threading.Event()
        self.ready = threading.Condition()
        self.view_messages: queue.Queue | None = queue.Queue(VIEW_QUEUE_MESSAGES) if view else None
        self.view_drops = 0
        self.streams: list[Stream] = []
        self.card: ModelCard | None = None
        self.genres: tuple[str, ...] = ()
        self.genre_index: np.ndarray = np.zeros(0, dtype=np.intp)  # labels index of each genre
        self.runner: WindowRunner | None = None
        self.publisher: Publisher | None = None
        self.metrics: MetricsServer | None = None
        self.outputs: Outputs | None = None
        self.latest: dict[str, GenreMessage] = {}
        self._sequence = Sequencer()
        self._workers: list[threading.Thread] = []
        self._engine_worker: EngineWorker | None = None
        self._started = time.monotonic()

    # -- life cycle -------------------------------------------------------------------------
    def start(self, on_progress: Callable[[str], None] = lambda _: None) -> None:
        """Load the engine, bind the feed, open the sources, then start the threads."""
        cfg = self.config
        self.card = load_model_card(cfg.engine.model)
        self.genres = genre_vocabulary(self.card, cfg.engine.genres)
        self.genre_index = np.array([self.card.labels.index(g) for g in self.genres], dtype=np.intp)
        smoothing = cfg.smoothing.with_card_threshold(self.card.unknown_threshold)
        hop_frames = frames_for_seconds(cfg.framing.hop_s)
        on_progress("loading engine")
        self.runner = load_runner(self.card, cfg.engine.kind, incremental=cfg.engine.incremental,
                                  hop_frames=hop_frames, max_batch=cfg.engine.max_batch,
                                  precision=cfg.engine.precision, threads=cfg.engine.threads,
                                  plan_dir=cfg.engine.plan_cache_dir or None)
        if self._runner_wrapper is not None:
            self.runner = self._runner_wrapper(self.runner)
        self.runner.warmup()
        if self.publish:
            self.publisher = Publisher(cfg.feed)
        if cfg.metrics.enabled:
            self.metrics = MetricsServer(self, cfg.metrics)
        if cfg.outputs:
            self.outputs = Outputs(cfg.outputs)
            self.outputs.start()
        for spec in cfg.streams:
            on_progress(f"opening {spec.id}")
            source = open_source(spec)
            ring = RingBuffer(int(spec.ring_s * source.sample_rate), source.channels)
            self.streams.append(Stream(
                stream_id=spec.id,
                source=source,
                ring=ring,
                resampler=Resampler(source.sample_rate, source.channels, spec.channel),
                framer=LogMelFramer(window_frames=WINDOW_FRAMES, hop_frames=hop_frames),
                windows=WindowQueue(cfg.framing.queue_windows, self.ready),
                smoother=Smoother(smoothing, labels=self.card.labels, genres=self.genres),
                health=HealthAlarms(cfg.alarms),
                levels=LevelStage(LoudnessMeter(source.sample_rate, source.channels), cfg.alarms)
                if cfg.loudness.enabled else None,
            ))
            if spec.source == "url" and spec.track_titles and is_http_url(spec.url):
                self.streams[-1].titles = IcyTitleWatcher(spec.url)
                self.streams[-1].tracks = TrackSegmenter(self.genres)
        self._engine_worker = EngineWorker(self)
        self._workers = [self._engine_worker]
        for stream in self.streams:
            block_frames = max(1024, stream.source.sample_rate // 20)
            self._workers.append(StreamWorker(stream, self.stop_event, block_frames))
        for worker in self._workers:
            worker.start()
        for stream in self.streams:
            stream.source.start(stream.ring)
            if stream.titles is not None:
                stream.titles.start()
        log.info("pipeline_started", streams=[s.stream_id for s in self.streams],
                 engine=self.runner.info.name, device=self.runner.info.device, model=self.card.name,
                 unknown_threshold=smoothing.unknown_threshold,
                 endpoint=cfg.feed.endpoint if self.publish else None,
                 metrics_port=self.metrics.port if self.metrics else None)

    def stop(self, timeout_s: float = 1.5) -> None:
        """Stop sources first (no new audio), then the workers; the engine worker sends a final status."""
        for stream in self.streams:
            stream.source.stop()
            if stream.titles is not None:
                stream.titles.stop()
        self.stop_event.set()
        if self.runner is not None:
            self.runner.interrupt()  # the worker's call in progress ends now, not in seconds
        with self.ready:
            self.ready.notify_all()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if self.publisher is not None:
            self.publisher.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.outputs is not None:
            self.outputs.close(max(0.0, deadline - time.monotonic()))
        if self.runner is not None:
            worker = self._engine_worker
            if worker is None:
                self.runner.close()
            elif not worker.close_when_idle(self.runner):
                log.warning("engine_busy_at_stop", detail="closed when its current call returns")
        log.info("pipeline_stopped")

    def reload(self, config: Config) -> None:
        """Apply a reloaded config (`config.split_reload`): smoothing, alarms and per-message feed
        options; sources and engine stay as they are."""
        smoothing = config.smoothing.with_card_threshold(
            self.card.unknown_threshold if self.card else None)
        for stream in self.streams:
            stream.smoother.reconfigure(smoothing)
            stream.health.reconfigure(config.alarms)
            if stream.levels is not None:
                stream.levels.alarms.reconfigure(config.alarms)
        self.config = config

    def status_line(self) -> str:
        """The current genre of each stream (or what is stuck), for systemd's STATUS= line."""
        now = time.monotonic()
        stuck = {s.stream_id: part for s in self.streams if (part := s.stalled(now))}
        parts = [f"{sid}: stalled ({part})" for sid, part in stuck.items()]
        parts += [f"{m.stream}: {m.genre} {m.confidence:.2f}"
                  for m in self.latest.values() if m.stream not in stuck]
        return "; ".join(parts) or "waiting for the first window"

    def stalled_part(self, now: float) -> str | None:
        """What keeps the daemon as a whole from working: a stuck engine worker, or every stream
        that has not ended stuck. None while it works; the watchdog is fed only then."""
        if self._engine_worker is not None and now - self._engine_worker.heartbeat > STALL_S:
            return "engine"
        live = [s for s in self.streams if not s.finished.is_set()]
        stuck = [s.stalled(now) for s in live]
        if live and all(stuck):
            return ", ".join(f"{s.stream_id}: {part}" for s, part in zip(live, stuck, strict=True))
        return None

    # -- tracks -----------------------------------------------------------------------------
    def follow_titles(self, stream: Stream, window: Window) -> None:
        """Cut the stream's track at each title that arrived before this window's audio did.

        The title's arrival (monotonic) becomes stream time through the window's own arrival, so
        the boundary falls where the audio was when the title came; the smoother starts afresh.
        """
        for arrived, title in stream.titles.take_before(window.arrival):
            t_s = max(window.t_start_s, window.t_end_s - (window.arrival - arrived))
            closed = stream.tracks.boundary(t_s, title)
            if closed is not None:
                self.emit(self.track_end_message(stream, closed))
            self.emit(TrackMessage(stream=stream.stream_id, event="start", wall=time.time(),
                                   t=t_s, title=title, source="icy"))
            stream.smoother.start_track()

    def track_end_message(self, stream: Stream, track: TrackSummary) -> TrackMessage:
        return TrackMessage(stream=stream.stream_id, event="end", wall=time.time(), t=track.end_s,
                            title=track.title, source="icy", genre=track.genre,
                            confidence=track.confidence, duration_s=track.duration_s,
                            windows=track.windows)

    # -- messages ---------------------------------------------------------------------------
    def emit(self, message) -> None:
        """Number it, publish it on the feed, offer it to the outputs and the live view; none
        of them waits."""
        message = self._sequence.stamp(message)
        if isinstance(message, GenreMessage):
            self.latest[message.stream] = message
        if self.publisher is not None:
            self.publisher.publish(message)
        if self.outputs is not None:
            self.outputs.offer(message)
        if self.view_messages is not None:
            try:
                self.view_messages.put_nowait(message)
            except queue.Full:
                self.view_drops += 1

    def genre_message(self, stream: Stream, window: Window, probs: np.ndarray, state) -> GenreMessage:
        feed = self.config.feed
        top = np.argsort(probs)[::-1][: feed.top_k]
        return GenreMessage(
            stream=stream.stream_id,
            t0=window.t_start_s,
            t1=window.t_end_s,
            wall=time.time(),
            latency_ms=(time.monotonic() - window.arrival) * 1000.0,
            genre=state.genre,
            confidence=state.confidence,
            raw_genre=state.raw_genre,
            top=[[self.card.labels[i], float(probs[i])] for i in top],
            level_dbfs=window.level_dbfs,
            silence=state.silence,
            model=self.card.name,
            engine=self.runner.info.name,
            probs=[float(x) for x in probs] if feed.publish_probs else None,
            candidates=state.candidates,
        )

    def change_message(self, stream: Stream, window: Window, state) -> ChangeMessage:
        return ChangeMessage(stream=stream.stream_id, wall=time.time(), t1=window.t_end_s,
                             genre=state.genre, previous=state.previous,
                             confidence=state.confidence)

    def publish_alarms(self, stream: Stream) -> None:
        """Publish and log the alarms of a stream that started or ended since the last call."""
        latest = self.latest.get(stream.stream_id)
        health = stream.health.update(
            now_s=time.monotonic(), source_state=stream.source.state,
            last_audio_s=stream.audio_at,
            latency_ms=latest.latency_ms if latest else 0.0,
            dropped_windows=stream.windows.dropped + stream.engine_failures)
        for event in [*health, *_drain(stream.alarm_events)]:
            log.warning("alarm_started" if event.active else "alarm_ended", stream=stream.stream_id,
                        alarm=event.kind, value=round(event.value, 2), threshold=event.threshold,
                        detail=event.detail)
            self.emit(AlarmMessage(stream=stream.stream_id, wall=time.time(), alarm=event.kind,
                                   active=event.active, value=event.value,
                                   threshold=event.threshold, detail=event.detail))

    def status_message(self, stream: Stream, p50: float, p99: float, *, final: bool) -> StatusMessage:
        levels = stream.levels
        loudness = levels.latest if levels is not None else None
        return StatusMessage(
            stream=stream.stream_id,
            wall=time.time(),
            uptime_s=time.monotonic() - self._started,
            device_state=stream.source.state,
            xruns=stream.source.xruns,
            ring_overruns=stream.ring.overrun_samples,
            dropped_windows=stream.windows.dropped + stream.engine_failures,
            feed_drops=self.publisher.drops if self.publisher else 0,
            engine_p50_ms=p50,
            engine_p99_ms=p99,
            windows=stream.smoother.windows,
            labels=list(self.card.labels),
            genres=list(self.genres),
            model=self.card.name,
            engine=self.runner.info.name,
            final=final,
            stalled=stream.stalled(time.monotonic()),
            alarms=stream.health.active + (levels.alarms.active if levels is not None else []),
            momentary_lufs=loudness.momentary_lufs if loudness else None,
            short_term_lufs=loudness.short_term_lufs if loudness else None,
            integrated_lufs=loudness.integrated_lufs if loudness else None,
            loudness_range_lu=loudness.range_lu if loudness else None,
            true_peak_dbtp=loudness.true_peak_dbtp if loudness else None,
            outputs=self.outputs.health() if self.outputs else None,
        )


def _drain(events: collections.deque[AlarmEvent]) -> Iterator[AlarmEvent]:
    """Take events off a deque that another thread appends to, oldest first."""
    while events:
        yield events.popleft()

