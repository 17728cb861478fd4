"""One input stream's stages, from ring to window queue, and the thread that runs them.

`StreamWorker`s, one per core, turn the ring audio of their share of the streams into windows
(resampler, framer, loudness, voice activity; `StreamFeed` is one stream's passes) and hand them
to the engine worker through a bounded `WindowQueue`; `Stream` holds every stage of one stream
and the one reset protocol across a gap in its audio.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import structlog

from streamclf.alarms import AlarmEvent, HealthAlarms, LevelStage
from streamclf.audio.icy import IcyTitleWatcher
from streamclf.audio.resample import Resampler
from streamclf.audio.ring import RingBuffer
from streamclf.backends.runner import WindowRunner
from streamclf.boundaries import BoundaryDetector
from streamclf.content import (
    ContentSmoother,
    TalkGate,
    VoiceActivity,
)
from streamclf.features.framer import LogMelFramer, Window
from streamclf.features.mel import SAMPLE_RATE_HZ
from streamclf.smoothing import Smoother
from streamclf.thread_names import name_this_thread
from streamclf.tracks import TrackSegmenter

log = structlog.get_logger(__name__)

MAX_IDLE_S = 0.25  # the longest a stream worker sleeps before looking at its ring again
# The longest a stream's ring goes unread while its next window is not in, so that its loudness,
# level alarms and audio liveness stay current between windows.
MAX_UNREAD_S = 1.0
READ_S = 0.5  # the most audio a stream worker takes from its ring in one pass
# A window's `arrival` is that of the newest frame read with its last one: a pass reads past
# the next window's audio by at most this much, so that latency_ms stays true under a backlog.
ARRIVAL_SLACK_S = 0.05
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
    # A stream's turn may pass without a read (`StreamFeed.due`), so the beat is per turn.
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


class StreamFeed:
    """One stream's passes from ring to window queue: read, stages, windows."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        # Up to READ_S in one pass: each pass through the stages costs Python calls whatever
        # its length.
        block_frames = math.ceil(READ_S * stream.resampler.in_rate)
        self._block = np.zeros((block_frames, stream.ring.channels), dtype=np.float32)
        self._slack_frames = math.ceil(ARRIVAL_SLACK_S * stream.resampler.in_rate)

    def frames_to_next_window(self) -> int:
        """Source frames the next window needs at least: its 16 kHz samples still to come, less
        those the resampler already holds, at the source's rate. Never more than it needs, so
        waking on them adds no latency; a wake-up too early costs one more pass."""
        stream = self.stream
        samples = stream.framer.samples_to_next_window() - stream.resampler.held_samples()
        return max(1, math.ceil(samples * stream.resampler.in_rate / SAMPLE_RATE_HZ))

    def wake_frames(self) -> int:
        """Ring frames worth a pass: the next window's, or half the ring when that is less (a
        pass then comes before the ring can overrun)."""
        return min(self.frames_to_next_window(), self.stream.ring.capacity // 2)

    def due(self, now: float) -> bool:
        """Whether a pass now does more than cost Python calls: the ring holds what the next
        window needs, the source ended or failed, or the ring went unread MAX_UNREAD_S. Reading
        only then keeps each stream to about one pass a window, and its window's latency to
        that of its own audio, whatever the other streams' phases."""
        stream = self.stream
        return (stream.ring.available >= self.wake_frames()
                or stream.source.state in ("ended", "failed")
                or now - stream.audio_at >= MAX_UNREAD_S)

    def step(self) -> str:
        """One pass: "read" (audio went through the stages), "idle" (the ring had none) or
        "ended" (nor will it: the source ended or failed)."""
        stream = self.stream
        needed = self.frames_to_next_window()
        n, arrival = stream.ring.read(self._block[: max(needed, self._slack_frames)])
        if n == 0:
            return "ended" if stream.source.state in ("ended", "failed") else "idle"
        stream.audio_at = time.monotonic()
        if stream.ring.gap:
            stream.restart_audio_stages(stream.ring.gap)
        if stream.levels is not None:
            stream.alarm_events.extend(stream.levels.push(self._block[:n]))
        self._frame(stream.resampler.push(self._block[:n]), arrival)
        return "read"

    def finish(self) -> None:
        """The source ended: what the resampler holds back becomes the last windows."""
        self._frame(self.stream.resampler.flush(), time.monotonic())
        log.info("stream_ended", stream=self.stream.stream_id, state=self.stream.source.state)
        self.stream.finished.set()

    def _frame(self, audio: np.ndarray, arrival: float) -> None:
        """16 kHz audio to the VAD first (a window's chunks are scored before it is queued),
        then to the framer."""
        stream = self.stream
        if stream.voice is not None:
            stream.voice.push(audio)
        for window in stream.framer.push(audio, arrival):
            stream.windows.put(window)


class StreamWorker(threading.Thread):
    """Ring → resampler → framer → window queue for a share of the streams, until their sources
    end: one thread per core, not per stream, so that 40 streams are not 40 threads waking,
    taking the GIL and switching (docs/benchmarks.md: where a stream's CPU goes).

    A pass reads each of its streams that is due (`StreamFeed.due`); when none read audio, the
    worker arms every ring at the frames its next window needs and sleeps on the one Event they
    share.
    """

    def __init__(self, streams: list[Stream], stop: threading.Event, *, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._feeds = [StreamFeed(stream) for stream in streams]  # those not ended or failed
        self._stopping = stop
        self._wakeup = threading.Event()
        for stream in streams:
            stream.ring.wakeup = self._wakeup

    def run(self) -> None:
        name_this_thread()
        while self._feeds and not self._stopping.is_set():
            now = time.monotonic()
            for feed in self._feeds:
                feed.stream.worker_beat = now
            read = [self._step(feed) for feed in list(self._feeds) if feed.due(now)]
            if not any(read):
                self._sleep()
        for feed in self._feeds:  # left only when stopping
            feed.stream.finished.set()

    def _step(self, feed: StreamFeed) -> bool:
        """One pass of one stream; True when it read audio. A stream whose stages fail leaves
        the worker, so that its `worker_beat` stops and it reads as stalled, and the others go
        on."""
        try:
            state = feed.step()
            if state == "ended":
                feed.finish()
        except Exception:
            log.exception("stream_worker_failed", stream=feed.stream.stream_id)
            state = "failed"
        if state in ("ended", "failed"):
            self._feeds.remove(feed)
        return state == "read"

    def _sleep(self) -> None:
        """Until a ring has what its stream's next window needs, or MAX_IDLE_S (liveness)."""
        self._wakeup.clear()
        ready = [feed.stream.ring.arm(feed.wake_frames()) for feed in self._feeds]
        if not any(ready):
            self._wakeup.wait(MAX_IDLE_S)
        for feed in self._feeds:
            feed.stream.ring.disarm()


def stream_workers(streams: list[Stream], stop: threading.Event, *,
                   cores: int) -> list[StreamWorker]:
    """`cores` workers (at most one per stream), the streams dealt out in turn."""
    count = max(1, min(cores, len(streams)))
    return [StreamWorker(streams[k::count], stop, name=f"stream-worker-{k}") for k in range(count)]
