"""Single-producer/single-consumer float32 ring buffer that never blocks the producer.

The producer is often a PortAudio callback: it must not wait for, or take a lock held by, the
reader. So the ring uses no lock at all: the producer only ever advances ``_claimed`` (before it
copies) and ``_written`` (after), the consumer only ``_read_pos``. When the producer laps the
reader, the oldest audio is simply overwritten; the reader notices by comparing positions, skips
what was lost (including anything clobbered *while* it copied) and counts it.

The reader need not poll: it names the write position it waits for (``arm``) and the producer
sets the ring's ``wakeup`` Event once a write reaches it. Setting an Event never waits for the
reader (its lock is only held for the instant of a flag change), and it happens at most once per
wait, not per block. A reader serving several rings gives them one Event and sleeps on it.

A source that restarts after a loss marks a gap (``mark_gap``) before it writes again: a read
never returns audio from both sides of it, and ``gap`` tells the reader that the frames it just
got do not follow the ones before (a restart, or an overrun that skipped audio), so that every
stage after the ring can start afresh (docs/architecture.md: one reset protocol).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import structlog

log = structlog.get_logger(__name__)


class RingBuffer:
    """SPSC ring of ``capacity`` frames × ``channels`` float32 with monotonic counters.

    ``written``: frames ever written; ``consumed``: frames ever returned by ``read``;
    ``overrun_samples``: frames dropped because the reader fell a whole buffer behind (frames,
    i.e. samples per channel). Always ``written == consumed + overrun_samples + available``.
    """

    def __init__(self, capacity: int, channels: int = 1) -> None:
        if capacity < 1 or channels < 1:
            msg = f"ring capacity and channels must be >= 1, got {capacity} and {channels}"
            raise ValueError(msg)
        self.capacity = int(capacity)
        self.channels = int(channels)
        self._data = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._arrival = np.full(self.capacity, math.nan, dtype=np.float64)
        self._claimed = 0  # producer: positions below this may already be overwritten
        self._written = 0  # producer: positions below this are complete
        self._read_pos = 0  # consumer
        self._dropped = 0  # consumer: overruns it has skipped
        self._consumed = 0  # consumer
        self._nonfinite = 0  # consumer
        self._gap_at = 0  # producer: the position of the latest gap
        self._gap_taken = 0  # consumer: the latest gap position it has read past
        self._gap_pending = ""  # consumer: a gap found by a read that returned no frames
        self.gap = ""  # consumer: why the last frames read do not follow the previous ones
        self._wake_at = math.inf  # consumer: the write position it sleeps until (``arm``)
        # Set by the write that reaches ``_wake_at``; the stream worker that reads several rings
        # replaces it with one Event of its own for all of them.
        self.wakeup = threading.Event()

    # -- producer side -----------------------------------------------------------------------

    def write(self, block: np.ndarray, arrival: float | None = None) -> None:
        """Copy ``block[n, channels]`` in; never blocks, never allocates; drops oldest on overflow.

        ``arrival`` is the monotonic time the block was captured (default: now).
        """
        n = block.shape[0]
        if n == 0:
            return
        t = time.monotonic() if arrival is None else arrival
        start = self._written
        end = start + n
        if n > self.capacity:  # only the newest capacity frames can survive anyway
            block = block[n - self.capacity :]
        first = end - block.shape[0]
        self._claimed = end
        i = first % self.capacity
        head = min(block.shape[0], self.capacity - i)
        self._data[i : i + head] = block[:head]
        self._arrival[i : i + head] = t
        rest = block.shape[0] - head
        if rest:
            self._data[:rest] = block[head:]
            self._arrival[:rest] = t
        self._written = end
        if end >= self._wake_at:
            self.wakeup.set()

    def mark_gap(self) -> None:
        """The next frames written do not follow the last ones (the source restarted)."""
        self._gap_at = self._written

    # -- consumer side -----------------------------------------------------------------------

    def arm(self, frames: int) -> bool:
        """Have ``wakeup`` set once ``frames`` frames beyond those read so far are written; True
        when they already are (the reader must not sleep then: that write set nothing). The
        reader clears ``wakeup`` before it arms, so no write between the two is missed."""
        self._wake_at = self._read_pos + max(1, frames)
        return self._written >= self._wake_at

    def disarm(self) -> None:
        """The reader is awake: writes set ``wakeup`` no more."""
        self._wake_at = math.inf

    def wake(self) -> None:
        """End the reader's sleep now (it is stopping)."""
        self.wakeup.set()

    def read(self, out: np.ndarray) -> tuple[int, float]:
        """Copy up to ``out.shape[0]`` of the oldest unread frames into ``out[m, channels]``.

        Returns ``(n, arrival)``: frames copied and the monotonic time at which the newest of
        them was written (nan when n == 0). Non-finite samples are replaced by 0 and counted.
        When n > 0, ``gap`` says whether these frames follow the last ones read (``""``), or not:
        ``"restart"`` (the source marked a gap) or ``"overrun"`` (audio was skipped).
        """
        m = out.shape[0]
        written = self._written
        gap_at = self._gap_at
        start = max(self._read_pos, written - self.capacity)
        n = min(m, written - start)
        if start < gap_at:
            n = min(n, gap_at - start)  # stop at the gap: the frames after it start afresh
        if n <= 0:
            return 0, math.nan
        i = start % self.capacity
        head = min(n, self.capacity - i)
        out[:head] = self._data[i : i + head]
        out[head:n] = self._data[: n - head]
        arrival = float(self._arrival[(start + n - 1) % self.capacity])
        # Anything the producer claimed while we copied may have overwritten our oldest frames.
        clobbered = self._claimed - self.capacity - start
        if clobbered > 0:
            skip = min(clobbered, n)
            out[: n - skip] = out[skip:n]
            start += skip
            n -= skip
        if self._gap_taken < gap_at <= start:
            self._gap_taken = gap_at
            self._gap_pending = "restart"
        elif start > self._read_pos and not self._gap_pending:
            self._gap_pending = "overrun"
        self._dropped += start - self._read_pos
        self._read_pos = start + n
        self._consumed += n
        if n == 0:
            return 0, math.nan
        self.gap, self._gap_pending = self._gap_pending, ""
        self._sanitize(out[:n])
        return n, arrival

    def _sanitize(self, block: np.ndarray) -> None:
        finite = np.isfinite(block)
        if finite.all():
            return
        bad = int(finite.size - np.count_nonzero(finite))
        np.copyto(block, 0.0, where=~finite)
        if self._nonfinite == 0:
            log.warning("nonfinite_samples", count=bad, action="replaced by 0")
        self._nonfinite += bad

    # -- counters (readable from any thread) ----------------------------------------------------

    @property
    def written(self) -> int:
        return self._written

    @property
    def consumed(self) -> int:
        return self._consumed

    @property
    def available(self) -> int:
        """Frames the next read can return (at most ``capacity``)."""
        return min(self._written - self._read_pos, self.capacity)

    @property
    def overrun_samples(self) -> int:
        """Frames lost to overflow, including those not yet noticed by the reader."""
        return self._dropped + max(0, self._written - self._read_pos - self.capacity)

    @property
    def nonfinite_samples(self) -> int:
        """NaN/Inf values (samples × channels) the reader replaced by 0."""
        return self._nonfinite
