"""The SPSC ring never reorders or duplicates audio and counts every frame it drops."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamclf.audio.ring import RingBuffer


def ramp(start: int, n: int, channels: int = 2) -> np.ndarray:
    """Frames numbered start..start+n-1 (exact in float32 below 2**24), same in every channel."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None], channels, axis=1)


class TestProperties:
    """Random interleavings of writes and reads keep order and account for every frame."""

    @settings(max_examples=200, deadline=None)
    @given(
        capacity=st.integers(1, 64),
        ops=st.lists(st.tuples(st.booleans(), st.integers(0, 100)), max_size=60),
    )
    def test_order_and_accounting(self, capacity, ops):
        ring = RingBuffer(capacity, 2)
        out = np.empty((100, 2), dtype=np.float32)
        next_frame, got = 0, []
        for is_write, size in ops:
            if is_write:
                ring.write(ramp(next_frame, size), arrival=float(next_frame + size))
                next_frame += size
            else:
                n, arrival = ring.read(out[:size])
                assert n <= min(size, capacity)
                if n:
                    assert np.array_equal(out[:n, 0], out[:n, 1])
                    got.extend(out[:n, 0].astype(int).tolist())
                    assert got[-1] < arrival <= next_frame  # stamp of the block holding it
                else:
                    assert math.isnan(arrival)
            assert ring.written == next_frame
            assert ring.written == ring.consumed + ring.overrun_samples + ring.available
        assert got == sorted(set(got)), "reordered or duplicated"
        assert len(got) == ring.consumed
        # what was lost is exactly the gaps (plus the oldest frames before the first read)
        unread_tail = set(range(next_frame - ring.available, next_frame))
        lost = set(range(next_frame)) - set(got) - unread_tail
        assert len(lost) == ring.overrun_samples

    def test_newest_survive_a_block_larger_than_the_ring(self):
        ring = RingBuffer(10, 2)
        ring.write(ramp(0, 25))
        out = np.empty((20, 2), dtype=np.float32)
        n, _ = ring.read(out)
        assert n == 10
        assert out[:n, 0].tolist() == list(range(15, 25))
        assert ring.overrun_samples == 15


class TestNonFinite:
    """NaN/Inf are replaced by 0 on the reader's side and counted."""

    def test_replaced_and_counted(self):
        ring = RingBuffer(16, 2)
        block = np.ones((4, 2), dtype=np.float32)
        block[1, 0] = np.nan
        block[2, 1] = np.inf
        block[3, :] = -np.inf
        ring.write(block)
        out = np.empty((8, 2), dtype=np.float32)
        n, _ = ring.read(out)
        assert n == 4
        assert np.isfinite(out[:n]).all()
        assert out[:n].tolist() == [[1, 1], [0, 1], [1, 0], [0, 0]]
        assert ring.nonfinite_samples == 4


class TestGaps:
    """A read never spans a gap the source marked, and says when its frames do not follow the
    last ones read: after a restart, or after an overrun skipped audio."""

    def test_read_stops_at_a_restart_and_reports_it_once(self):
        ring = RingBuffer(64, 2)
        out = np.empty((64, 2), dtype=np.float32)
        ring.write(ramp(0, 10))
        ring.mark_gap()
        ring.write(ramp(100, 5))
        assert ring.read(out)[0] == 10 and ring.gap == ""
        assert out[:10, 0].tolist() == list(range(10))
        assert ring.read(out)[0] == 5 and ring.gap == "restart"
        assert out[:5, 0].tolist() == list(range(100, 105))
        ring.write(ramp(105, 3))
        assert ring.read(out)[0] == 3 and ring.gap == ""

    def test_a_gap_marked_while_the_reader_is_level(self):
        ring = RingBuffer(64, 1)
        out = np.empty((64, 1), dtype=np.float32)
        ring.write(ramp(0, 4, 1))
        ring.read(out)
        ring.mark_gap()
        assert ring.read(out)[0] == 0
        ring.write(ramp(50, 4, 1))
        assert ring.read(out)[0] == 4 and ring.gap == "restart"

    def test_an_overrun_is_a_gap(self):
        ring = RingBuffer(16, 1)
        out = np.empty((8, 1), dtype=np.float32)
        ring.write(ramp(0, 4, 1))
        assert ring.read(out)[0] == 4 and ring.gap == ""
        ring.write(ramp(4, 40, 1))
        n, _ = ring.read(out)
        assert ring.gap == "overrun" and out[:n, 0].tolist() == list(range(28, 36))
        assert ring.read(out)[0] == 8 and ring.gap == ""


class TestConcurrency:
    """A real producer thread racing a slow reader: order kept, drops all counted."""

    @pytest.mark.timeout(60)
    def test_threaded_producer_and_consumer(self):
        ring = RingBuffer(257, 1)
        total = 400_000
        done = threading.Event()

        def produce() -> None:
            for start in range(0, total, 97):
                ring.write(ramp(start, min(97, total - start), channels=1))
                if start % (97 * 50) == 0:
                    time.sleep(0)
            done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        out = np.empty((64, 1), dtype=np.float32)
        last, got = -1, 0
        deadline = time.monotonic() + 60  # a dead producer fails the test instead of hanging it
        while not (done.is_set() and ring.available == 0):
            assert time.monotonic() < deadline, "the producer never finished"
            n, _ = ring.read(out)
            if n:
                frames = out[:n, 0]
                assert frames[0] > last and np.all(np.diff(frames) == 1), "reordered or torn"
                last, got = int(frames[-1]), got + n
        producer.join()
        assert last == total - 1
        assert got + ring.overrun_samples == total


def sleep_until(rings: list[RingBuffer], frames: int, timeout_s: float) -> None:
    """What a stream worker does when no ring had audio: arm each, sleep on their one Event."""
    wakeup = rings[0].wakeup
    wakeup.clear()
    ready = [ring.arm(frames) for ring in rings]  # every ring armed, even after a ready one
    if not any(ready):
        wakeup.wait(timeout_s)
    for ring in rings:
        ring.disarm()


class TestArm:
    """The reader sleeps until the frames it needs were written, not by polling a clock."""

    def test_woken_by_the_write_that_reaches_the_frames(self):
        ring = RingBuffer(1000, 1)
        ring.write(ramp(0, 10, channels=1))  # written before the wait: counts towards it

        def write_later() -> None:
            time.sleep(0.05)
            ring.write(ramp(10, 5, channels=1))  # 15 of 20: no wake-up
            time.sleep(0.05)
            ring.write(ramp(15, 5, channels=1))  # 20: wakes the reader

        writer = threading.Thread(target=write_later)
        started = time.monotonic()
        writer.start()
        sleep_until([ring], 20, timeout_s=5.0)
        waited = time.monotonic() - started
        writer.join()
        assert 0.09 <= waited < 2.0
        assert ring.available == 20

    def test_frames_already_there_do_not_wait(self):
        ring = RingBuffer(100, 1)
        ring.write(ramp(0, 8, channels=1))
        assert ring.arm(8)
        started = time.monotonic()
        sleep_until([ring], 8, timeout_s=5.0)
        assert time.monotonic() - started < 0.5

    def test_times_out_and_wake_ends_it(self):
        ring = RingBuffer(100, 1)
        started = time.monotonic()
        sleep_until([ring], 1, timeout_s=0.05)
        assert 0.04 <= time.monotonic() - started < 1.0
        threading.Timer(0.05, ring.wake).start()
        started = time.monotonic()
        sleep_until([ring], 1, timeout_s=5.0)
        assert time.monotonic() - started < 2.0

    def test_rings_that_share_an_event_wake_one_reader(self):
        """A worker serving several streams: a write to any of its rings that reaches what that
        ring was armed for wakes it; a disarmed ring's writes do not set the Event."""
        quiet, busy = RingBuffer(100, 1), RingBuffer(100, 1)
        busy.wakeup = quiet.wakeup
        threading.Timer(0.05, lambda: busy.write(ramp(0, 4, channels=1))).start()
        started = time.monotonic()
        sleep_until([quiet, busy], 4, timeout_s=5.0)
        assert 0.04 <= time.monotonic() - started < 2.0
        quiet.wakeup.clear()
        busy.write(ramp(4, 50, channels=1))  # disarmed: no wake-up
        assert not quiet.wakeup.is_set()
