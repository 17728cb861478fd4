"""The one place where the stages are wired together and their threads started.

Threads (docs/architecture.md): each source pushes into its own ring (PortAudio callback or a
reader thread, owned by the source); a `StreamWorker` per core turns the ring audio of its share
of the streams into windows; one `EngineWorker` batches the windows of all streams, runs the
engine, smooths and publishes.
The caller's thread (serve/listen) only handles signals, sd_notify and the live view.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable

import structlog

from streamclf.alarms import HealthAlarms, LevelStage
from streamclf.audio.icy import IcyTitleWatcher, is_http_url
from streamclf.audio.resample import Resampler
from streamclf.audio.ring import RingBuffer
from streamclf.audio.sources import open_source
from streamclf.backends.onnx import default_threads
from streamclf.backends.runner import WindowRunner, load_runner
from streamclf.backends.selftest import checked_runner
from streamclf.boundaries import detector_for
from streamclf.config import Config
from streamclf.content import (
    ContentSmoother,
    MusicEvidence,
    SileroVad,
    TalkGate,
    VoiceActivity,
)
from streamclf.engine_worker import EngineWorker
from streamclf.errors import ConfigError
from streamclf.features.framer import LogMelFramer
from streamclf.features.mel import WINDOW_FRAMES, frames_for_seconds
from streamclf.feed.fanout import FeedFanout
from streamclf.feed.publisher import Publisher
from streamclf.feed.schema import GenreMessage
from streamclf.loudness import LoudnessMeter
from streamclf.metrics import MetricsServer
from streamclf.models.card import ModelCard, genre_vocabulary, load_model_card
from streamclf.outputs import Outputs
from streamclf.smoothing import Smoother, card_thresholds
from streamclf.streams import STALL_S, Stream, WindowQueue, stream_workers
from streamclf.tracks import TrackSegmenter

log = structlog.get_logger(__name__)

VIEW_QUEUE_MESSAGES = 256  # messages buffered for the live view before the oldest are dropped


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
        self.ready: list[threading.Condition] = []  # one per engine worker, its streams notify it
        self.feed = FeedFanout(queue.Queue(VIEW_QUEUE_MESSAGES) if view else None)
        self.view_messages = self.feed.view_messages
        self.streams: list[Stream] = []
        self.card: ModelCard | None = None
        self.genres: tuple[str, ...] = ()  # what may be published as a stream's genre
        self.families: tuple[str, ...] = ()  # what the genre decision picks among
        self.runners: list[WindowRunner] = []  # one per engine worker; the first self-tested
        self.publisher: Publisher | None = None
        self.metrics: MetricsServer | None = None
        self.outputs: Outputs | None = None
        self.latest: dict[str, GenreMessage] = self.feed.latest  # each stream's last genre message
        self._workers: list[threading.Thread] = []
        self._engine_workers: list[EngineWorker] = []
        self._started = time.monotonic()

    @property
    def runner(self) -> WindowRunner | None:
        """The first engine worker's runner, the one the start-up self-test ran (None before)."""
        return self.runners[0] if self.runners else None

    # -- life cycle -------------------------------------------------------------------------
    def start(self, on_progress: Callable[[str], None] = lambda _: None) -> None:
        """Load the engine, bind the feed, open the sources, then start the threads."""
        cfg = self.config
        self.card = load_model_card(cfg.engine.model)
        self.families, self.genres = genre_vocabulary(self.card, cfg.engine.genres)
        smoothing, thresholds = card_thresholds(cfg.smoothing, self.card)
        hop_frames = frames_for_seconds(cfg.framing.hop_s)
        for i, spec in enumerate(cfg.streams):
            if spec.audio_boundaries and detector_for(self.card.name) is None:
                msg = (f"streams[{i}].audio_boundaries: no boundary detector measured on model "
                       f"{self.card.name}'s embeddings (docs/tracks.md)")
                raise ConfigError(msg)
        on_progress("loading engine")
        # no more workers than streams: a worker without a stream would hold a runner for nothing
        workers = max(1, min(cfg.engine.workers or default_threads(), len(cfg.streams)))
        # several workers share the cores out among their runners unless threads is given
        threads = cfg.engine.threads or (max(1, default_threads() // workers) if workers > 1
                                         else 0)

        def load() -> WindowRunner:
            runner = load_runner(self.card, cfg.engine.kind, incremental=cfg.engine.incremental,
                                 hop_frames=hop_frames, max_batch=cfg.engine.max_batch,
                                 precision=cfg.engine.precision, threads=threads,
                                 cpu_precision=cfg.engine.cpu_precision,
                                 plan_dir=cfg.engine.plan_cache_dir or None)
            if self._runner_wrapper is not None:
                runner = self._runner_wrapper(runner)
            runner.warmup()
            return runner

        first = load()
        on_progress("self-test")
        self.runners = [checked_runner(first, self.card, forced=cfg.engine.kind != "auto",
                                       fallback=lambda: load_runner(
                                           self.card, "onnxruntime", incremental=False,
                                           max_batch=cfg.engine.max_batch,
                                           threads=cfg.engine.threads))]
        if workers > 1 and (self.runner is not first or self.runner.info.name != "onnxruntime"):
            log.warning("engine_workers_reduced", asked=workers, workers=1,
                        reason="several engine workers run only ONNX Runtime's own runner "
                               f"(this one: {self.runner.info.name}, {self.runner.info.device})")
        elif workers > 1:
            for _ in range(workers - 1):  # the same engine, model and weights as the tested one
                self.runners.append(load())  # one at a time: a failed start closes those loaded
        self.ready = [threading.Condition() for _ in self.runners]
        if self.publish:
            self.publisher = self.feed.publisher = Publisher(cfg.feed)
        if cfg.metrics.enabled:
            self.metrics = MetricsServer(self, cfg.metrics)
        music_evidence = MusicEvidence(self.card.name) if cfg.content.enabled else None
        if cfg.outputs:
            self.outputs = self.feed.outputs = Outputs(cfg.outputs)
            self.outputs.start()
        for k, spec in enumerate(cfg.streams):
            on_progress(f"opening {spec.id}")
            source = open_source(spec)
            ring = RingBuffer(int(spec.ring_s * source.sample_rate), source.channels)
            self.streams.append(Stream(
                stream_id=spec.id,
                source=source,
                ring=ring,
                resampler=Resampler(source.sample_rate, source.channels, spec.channel),
                # Phases spread over the hop: the streams' windows fall due one after another,
                # not all in the same instant (docs/architecture.md: latency under load).
                framer=LogMelFramer(window_frames=WINDOW_FRAMES, hop_frames=hop_frames,
                                    phase_frames=k * hop_frames // len(cfg.streams)),
                # stream k is the engine worker k mod n's (its runner keeps the stream's state)
                windows=WindowQueue(cfg.framing.queue_windows, self.ready[k % len(self.ready)]),
                smoother=Smoother(smoothing, labels=self.card.labels, genres=self.families,
                                  published=self.genres, thresholds=thresholds),
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
                self.streams[-1].tracks = TrackSegmenter(self.families, self.genres,
                                                            late_windows=late)
            elif spec.audio_boundaries:
                detector = detector_for(self.card.name)
                self.streams[-1].boundaries = detector
                self.streams[-1].tracks = TrackSegmenter(
                    self.families, self.genres, late_windows=detector.delay_windows + 1)
        count = len(self.runners)
        drained = [threading.Event() for _ in self.runners]
        self._engine_workers = [
            EngineWorker(streams=self.streams[i::count], runner=runner, feed=self.feed,
                         card=self.card, genres=self.genres, families=self.families,
                         feed_config=cfg.feed, metrics=self.metrics, stop=self.stop_event,
                         ready=self.ready[i], all_finished=self.all_finished, drained=drained,
                         index=i, started=self._started, music_evidence=music_evidence)
            for i, runner in enumerate(self.runners)]
        self._workers = [*self._engine_workers,
                         *stream_workers(self.streams, self.stop_event, cores=default_threads())]
        for worker in self._workers:
            worker.start()
        for stream in self.streams:
            stream.source.start(stream.ring)
            if stream.titles is not None:
                stream.titles.start()
        log.info("pipeline_started", streams=[s.stream_id for s in self.streams],
                 engine=self.runner.info.name, device=self.runner.info.device,
                 engine_workers=len(self.runners), model=self.card.name,
                 unknown_threshold=smoothing.unknown_threshold, published_genres=self.genres,
                 genre_thresholds=thresholds or None,
                 endpoint=cfg.feed.endpoint if self.publish else None,
                 metrics_port=self.metrics.port if self.metrics else None)

    def stop(self, timeout_s: float = 1.5) -> None:
        """Stop sources first (no new audio), then the workers; the engine worker sends a final
        status."""
        for stream in self.streams:
            stream.source.stop()
            if stream.titles is not None:
                stream.titles.stop()
        self.stop_event.set()
        for stream in self.streams:
            stream.ring.wake()
        for runner in self.runners:
            runner.interrupt()  # the worker's call in progress ends now, not in seconds
        for ready in self.ready:
            with ready:
                ready.notify_all()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if self.publisher is not None:
            self.publisher.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.outputs is not None:
            self.outputs.close(max(0.0, deadline - time.monotonic()))
        if self._engine_workers:
            for worker, runner in zip(self._engine_workers, self.runners, strict=True):
                if not worker.close_when_idle(runner):
                    log.warning("engine_busy_at_stop", worker=worker.name,
                                detail="closed when its current call returns")
        else:  # stopped before the workers were made: the runners loaded so far
            for runner in self.runners:
                runner.close()
        log.info("pipeline_stopped")

    def reload(self, config: Config) -> None:
        """Apply a reloaded config (`config.split_reload`): smoothing, alarms and per-message feed
        options; sources and engine stay as they are."""
        for stream in self.streams:  # streams exist once start() has loaded the card
            stream.smoother.reconfigure(*card_thresholds(config.smoothing, self.card))
            stream.health.reconfigure(config.alarms)
            if stream.levels is not None:
                stream.levels.alarms.reconfigure(config.alarms)
        for worker in self._engine_workers:
            worker.feed_config = config.feed
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
        if any(now - worker.heartbeat > STALL_S for worker in self._engine_workers):
            return "engine"
        live = [s for s in self.streams if not s.finished.is_set()]
        stuck = [s.stalled(now) for s in live]
        if live and all(stuck):
            return ", ".join(f"{s.stream_id}: {part}" for s, part in zip(live, stuck, strict=True))
        return None
