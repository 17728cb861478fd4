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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog

from streamclf.audio.resample import Resampler
from streamclf.audio.ring import RingBuffer
from streamclf.audio.sources import open_source
from streamclf.backends.incremental import WindowRunner, load_runner
from streamclf.config import Config
from streamclf.features.framer import LogMelFramer, Window
from streamclf.features.mel import SAMPLE_RATE_HZ, WINDOW_FRAMES, frames_for_seconds
from streamclf.feed.publisher import Publisher
from streamclf.feed.schema import ChangeMessage, GenreMessage, Sequencer, StatusMessage
from streamclf.models.card import ModelCard, genre_vocabulary, load_model_card
from streamclf.smoothing import Smoother

log = structlog.get_logger(__name__)

POLL_S = 0.01  # how often an empty ring is looked at once the next window's audio is due
MAX_IDLE_S = 0.25  # the longest a stream worker sleeps before looking at its ring again
LATENCY_HISTORY = 512  # windows kept for the p50/p99 engine latency in status messages
VIEW_QUEUE_MESSAGES = 256  # messages buffered for the live view before the oldest are dropped


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
    finished: threading.Event = field(default_factory=threading.Event)
    engine_failures: int = 0


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
            if n == 0:
                if stream.source.state in ("ended", "failed"):
                    break
                self._stopping.wait(self._idle_s())
                continue
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
            state = stream.smoother.update(probs, window.t_end_s, window.level_dbfs)
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
        self.runner: WindowRunner | None = None
        self.publisher: Publisher | None = None
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
                smoother=Smoother(cfg.smoothing, labels=self.card.labels, genres=self.genres),
            ))
        self._engine_worker = EngineWorker(self)
        self._workers = [self._engine_worker]
        for stream in self.streams:
            block_frames = max(1024, stream.source.sample_rate // 20)
            self._workers.append(StreamWorker(stream, self.stop_event, block_frames))
        for worker in self._workers:
            worker.start()
        for stream in self.streams:
            stream.source.start(stream.ring)
        log.info("pipeline_started", streams=[s.stream_id for s in self.streams],
                 engine=self.runner.info.name, device=self.runner.info.device, model=self.card.name,
                 endpoint=cfg.feed.endpoint if self.publish else None)

    def stop(self, timeout_s: float = 1.5) -> None:
        """Stop sources first (no new audio), then the workers; the engine worker sends a final status."""
        for stream in self.streams:
            stream.source.stop()
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
        if self.runner is not None:
            worker = self._engine_worker
            if worker is None:
                self.runner.close()
            elif not worker.close_when_idle(self.runner):
                log.warning("engine_busy_at_stop", detail="closed when its current call returns")
        log.info("pipeline_stopped")

    def reload(self, config: Config) -> None:
        """Apply a new config's smoothing and feed options; sources and engine stay as they are."""
        for stream in self.streams:
            stream.smoother.reconfigure(config.smoothing)
        self.config = config
        log.info("config_reloaded")

    def status_line(self) -> str:
        """The current genre of each stream, for systemd's STATUS= line."""
        return "; ".join(f"{m.stream}: {m.genre} {m.confidence:.2f}" for m in self.latest.values()) \
            or "waiting for the first window"

    def last_heartbeat(self) -> float:
        return self._engine_worker.heartbeat if self._engine_worker else time.monotonic()

    # -- messages ---------------------------------------------------------------------------
    def emit(self, message) -> None:
        """Number it, publish it on the feed (never blocks), hand it to the live view."""
        message = self._sequence.stamp(message)
        if isinstance(message, GenreMessage):
            self.latest[message.stream] = message
        if self.publisher is not None:
            self.publisher.publish(message)
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

    def status_message(self, stream: Stream, p50: float, p99: float, *, final: bool) -> StatusMessage:
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
        )

