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
from streamclf.backends.runner import WindowRunner, load_runner
from streamclf.backends.selftest import checked_runner
from streamclf.boundaries import BoundaryDetector, detector_for
from streamclf.config import Config, FeedConfig
from streamclf.content import (
    ContentSmoother,
    MusicEvidence,
    SileroVad,
    TalkGate,
    VoiceActivity,
    window_content,
)
from streamclf.errors import ConfigError
from streamclf.features.framer import LogMelFramer, Window
from streamclf.features.mel import SAMPLE_RATE_HZ, WINDOW_FRAMES, frames_for_seconds
from streamclf.feed import messages
from streamclf.feed.fanout import FeedFanout
from streamclf.feed.publisher import Publisher
from streamclf.feed.schema import GenreMessage
from streamclf.loudness import LoudnessMeter
from streamclf.metrics import MetricsServer
from streamclf.models.card import ModelCard, genre_vocabulary, load_model_card
from streamclf.outputs import Outputs
from streamclf.smoothing import Smoother
from streamclf.tracks import TrackSegmenter

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

    Each window carries the number of gaps its stream had before it, so that the engine worker
    never gets windows from both sides of a gap at once and restarts its stages between them.
    """

    def __init__(self, capacity: int, ready: threading.Condition) -> None:
        self._windows: collections.deque[tuple[int, Window]] = collections.deque()
        self._capacity = capacity
        self._ready = ready
        self.dropped = 0
        self._gaps_put = 0  # stream worker: gaps before the windows it puts now
        self._gaps_taken = 0  # engine worker: gaps before the windows it took last

    def put(self, window: Window) -> None:
        with self._ready:
            if len(self._windows) >= self._capacity:
                self._windows.popleft()
                self.dropped += 1
            self._windows.append((self._gaps_put, window))
            self._ready.notify()

    def mark_gap(self) -> None:
        """Stream worker: the windows put from now on follow a gap in the audio."""
        with self._ready:
            self._gaps_put += 1

    def take_all(self) -> tuple[list[Window], bool]:
        """The queued windows up to the next gap, and whether a gap lies before them (the
        engine worker then restarts its stages of this stream before it runs them).

        Called with the condition held by the engine worker.
        """
        if not self._windows:
            return [], False
        gaps = self._windows[0][0]
        taken = []
        while self._windows and self._windows[0][0] == gaps:
            taken.append(self._windows.popleft()[1])
        after_gap, self._gaps_taken = gaps != self._gaps_taken, gaps
        return taken, after_gap

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
    voice: VoiceActivity | None = None  # these three None when [content] is off
    content: ContentSmoother | None = None
    talk: TalkGate | None = None
    smoothed: np.ndarray | None = None  # the last window's smoothed tag probabilities
    finished: threading.Event = field(default_factory=threading.Event)
    engine_failures: int = 0
    gaps: int = 0  # source restarts and overruns after which every stage started afresh
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

    def restart_audio_stages(self, reason: str) -> None:
        """Stream worker, at a gap in the audio (`RingBuffer.gap`): its resampler, framer and
        loudness meter forget the audio before it, in that order; the engine worker restarts
        its own stages when it takes the first window after the gap."""
        self.resampler.reset()
        self.framer.reset()
        if self.levels is not None:
            self.levels.meter.reset()
        if self.voice is not None:
            self.voice.reset()
        self.windows.mark_gap()
        self.gaps += 1
        log.info("stream_gap", stream=self.stream_id, reason=reason, gaps=self.gaps)

    def restart_window_stages(self, runner: WindowRunner) -> None:
        """Engine worker, before the first window after a gap: the runner's per-stream state
        and the smoother's average and held genre (the open track, named by its title, goes
        on)."""
        runner.reset(self.stream_id)
        self.smoother.start_track()
        if self.boundaries is not None:
            self.boundaries.reset()

    # Level alarms from the stream worker, waiting for the engine worker to publish them (a
    # deque: append and popleft are thread-safe).
    alarm_events: collections.deque[AlarmEvent] = field(default_factory=collections.deque)
    titles: IcyTitleWatcher | None = None  # http(s) url streams: the ICY title of the track
    tracks: TrackSegmenter | None = None
    boundaries: BoundaryDetector | None = None  # audio_boundaries: tracks cut from the audio


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
            if stream.ring.gap:
                stream.restart_audio_stages(stream.ring.gap)
            if stream.levels is not None:
                stream.alarm_events.extend(stream.levels.push(self._block[:n]))
            self._frame(stream.resampler.push(self._block[:n]), arrival)
        if not self._stopping.is_set():
            self._frame(stream.resampler.flush(), time.monotonic())
            log.info("stream_ended", stream=stream.stream_id, state=stream.source.state)
        stream.finished.set()

    def _frame(self, audio: np.ndarray, arrival: float) -> None:
        """16 kHz audio to the VAD first (a window's chunks are scored before it is queued),
        then to the framer."""
        stream = self._stream
        if stream.voice is not None:
            stream.voice.push(audio)
        for window in stream.framer.push(audio, arrival):
            stream.windows.put(window)


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

    It alone owns the PUB socket (a ZeroMQ socket belongs to one thread). It is given the
    streams, the runner and the feed fan-out, and hands plain results to `streamclf.feed.messages`;
    it never calls back into the pipeline.
    """

    def __init__(self, *, streams: list[Stream], runner: WindowRunner, feed: FeedFanout,
                 card: ModelCard, genres: tuple[str, ...], feed_config: FeedConfig,
                 metrics: MetricsServer | None, stop: threading.Event, ready: threading.Condition,
                 all_finished: threading.Event, started: float,
                 music_evidence: MusicEvidence | None = None) -> None:
        super().__init__(name="engine", daemon=True)
        self._streams = streams
        self._runner = runner
        self._feed = feed
        self._card = card
        self._genres = genres
        self._genre_index = np.array([card.labels.index(g) for g in genres], dtype=np.intp)
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
        except Exception as exc:  # noqa: BLE001 — an engine fault must not stop the daemon: count, carry on
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
                stream.tracks.push(probs[self._genre_index], t_end_s=window.t_end_s,
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
        self.feed = FeedFanout(queue.Queue(VIEW_QUEUE_MESSAGES) if view else None)
        self.view_messages = self.feed.view_messages
        self.streams: list[Stream] = []
        self.card: ModelCard | None = None
        self.genres: tuple[str, ...] = ()
        self.runner: WindowRunner | None = None
        self.publisher: Publisher | None = None
        self.metrics: MetricsServer | None = None
        self.outputs: Outputs | None = None
        self.latest: dict[str, GenreMessage] = self.feed.latest  # each stream's last genre message
        self._workers: list[threading.Thread] = []
        self._engine_worker: EngineWorker | None = None
        self._started = time.monotonic()

    # -- life cycle -------------------------------------------------------------------------
    def start(self, on_progress: Callable[[str], None] = lambda _: None) -> None:
        """Load the engine, bind the feed, open the sources, then start the threads."""
        cfg = self.config
        self.card = load_model_card(cfg.engine.model)
        self.genres = genre_vocabulary(self.card, cfg.engine.genres)
        smoothing = cfg.smoothing.with_card_threshold(self.card.unknown_threshold)
        hop_frames = frames_for_seconds(cfg.framing.hop_s)
        for i, spec in enumerate(cfg.streams):
            if spec.audio_boundaries and detector_for(self.card.name) is None:
                msg = (f"streams[{i}].audio_boundaries: no boundary detector measured on model "
                       f"{self.card.name}'s embeddings (docs/tracks.md)")
                raise ConfigError(msg)
        on_progress("loading engine")
        self.runner = load_runner(self.card, cfg.engine.kind, incremental=cfg.engine.incremental,
                                  hop_frames=hop_frames, max_batch=cfg.engine.max_batch,
                                  precision=cfg.engine.precision, threads=cfg.engine.threads,
                                  cpu_precision=cfg.engine.cpu_precision,
                                  plan_dir=cfg.engine.plan_cache_dir or None)
        if self._runner_wrapper is not None:
            self.runner = self._runner_wrapper(self.runner)
        self.runner.warmup()
        on_progress("self-test")
        self.runner = checked_runner(self.runner, self.card, forced=cfg.engine.kind != "auto",
                                     fallback=lambda: load_runner(
                                         self.card, "onnxruntime", incremental=False,
                                         max_batch=cfg.engine.max_batch,
                                         threads=cfg.engine.threads))
        if self.publish:
            self.publisher = self.feed.publisher = Publisher(cfg.feed)
        if cfg.metrics.enabled:
            self.metrics = MetricsServer(self, cfg.metrics)
        music_evidence = MusicEvidence(self.card.name) if cfg.content.enabled else None
        if cfg.outputs:
            self.outputs = self.feed.outputs = Outputs(cfg.outputs)
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
            if cfg.content.enabled:
                self.streams[-1].voice = VoiceActivity(SileroVad())
                self.streams[-1].content = ContentSmoother(cfg.content)
                self.streams[-1].talk = TalkGate(cfg.content.talk_genre)
            if spec.source == "url" and spec.track_titles and is_http_url(spec.url):
                self.streams[-1].titles = IcyTitleWatcher(spec.url)
                # a title's boundary lies at most one window back
                late = math.ceil(cfg.framing.window_s / cfg.framing.hop_s)
                self.streams[-1].tracks = TrackSegmenter(self.genres, late_windows=late)
            elif spec.audio_boundaries:
                detector = detector_for(self.card.name)
                self.streams[-1].boundaries = detector
                self.streams[-1].tracks = TrackSegmenter(
                    self.genres, late_windows=detector.delay_windows + 1)
        self._engine_worker = EngineWorker(
            streams=self.streams, runner=self.runner, feed=self.feed, card=self.card,
            genres=self.genres, feed_config=cfg.feed, metrics=self.metrics, stop=self.stop_event,
            ready=self.ready, all_finished=self.all_finished, started=self._started,
            music_evidence=music_evidence)
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
        if self._engine_worker is not None:
            self._engine_worker.feed_config = config.feed
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


def _drain(events: collections.deque[AlarmEvent]) -> Iterator[AlarmEvent]:
    """Take events off a deque that another thread appends to, oldest first."""
    while events:
        yield events.popleft()

