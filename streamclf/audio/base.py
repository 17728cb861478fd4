"""What every audio source shares: the shape, the states and counters, back-off, the reader thread.

Every source has the same small shape: ``open()`` learns ``sample_rate`` and ``channels``,
``start(ring)`` begins pushing float32 ``[n, channels]`` blocks at the native rate into a
:class:`~streamclf.audio.ring.RingBuffer`, ``stop()`` ends it. ``state`` is one of
``starting``, ``running``, ``lost`` (retrying with back-off), ``ended`` (finite input done) or
``failed`` (``error`` says why, one line); counters ``xruns``, ``restarts``,
``nonfinite_samples``. Failures inside a reader thread become ``failed`` plus one log line,
never a traceback. The kinds live beside this module: files, PCM/ffmpeg, PortAudio devices.
"""

from __future__ import annotations

import threading
from typing import Protocol

import structlog

from streamclf.audio.ring import RingBuffer
from streamclf.errors import AudioInputError
from streamclf.thread_names import name_this_thread

log = structlog.get_logger(__name__)

STATES = ("starting", "running", "lost", "ended", "failed")
BLOCK_FRAMES = 1024
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0


class Source(Protocol):
    sample_rate: int
    channels: int
    state: str
    xruns: int
    restarts: int
    error: AudioInputError | None

    @property
    def nonfinite_samples(self) -> int: ...

    def open(self) -> None: ...

    def start(self, ring: RingBuffer) -> None: ...

    def stop(self) -> None: ...


class Backoff:
    """Doubling delays from ``first_s`` up to ``max_s``; ``reset()`` after a good run."""

    def __init__(self, first_s: float = RETRY_FIRST_S, max_s: float = RETRY_MAX_S) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.reset()

    def reset(self) -> None:
        self._next_s = self.first_s

    def next_s(self) -> float:
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


class SourceBase:
    """State, counters and the stop event shared by every source."""

    kind = "source"

    def __init__(self) -> None:
        self.sample_rate = 0
        self.channels = 0
        self.state = "starting"
        self.xruns = 0
        self.restarts = 0
        self.error: AudioInputError | None = None
        self._ring: RingBuffer | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def nonfinite_samples(self) -> int:
        """NaN/Inf samples replaced by 0 (counted where the stream worker reads the ring)."""
        return 0 if self._ring is None else self._ring.nonfinite_samples

    def _attach(self, ring: RingBuffer) -> None:
        if self.sample_rate <= 0:
            self.open()
        if ring.channels != self.channels:
            msg = f"ring has {ring.channels} channels, {self.kind} delivers {self.channels}"
            raise ValueError(msg)
        self._ring = ring
        self._stopping.clear()

    def _set_state(self, state: str, **details: object) -> None:
        if state != self.state:
            self.state = state
            log.info("source_state", source=self.kind, state=state, **details)

    def _fail(self, error: AudioInputError) -> None:
        self.error = error
        self._set_state("failed", error=str(error))

    def _spawn(self, target) -> None:
        def guarded() -> None:
            name_this_thread()
            try:
                target()
            except AudioInputError as exc:
                self._fail(exc)
            except Exception as exc:  # noqa: BLE001
                # a reader thread ends in a state, not a traceback
                self._fail(AudioInputError(f"{self.kind}: {type(exc).__name__}: {exc}"))

        self._thread = threading.Thread(target=guarded, name=f"streamclf-{self.kind}", daemon=True)
        self._thread.start()

    def _join(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
