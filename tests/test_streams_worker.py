"""A stream worker's passes: windows stamped with the arrival of their own audio, even from a
backlog it reads in large passes; one worker serving several streams, and one failing stream
leaving the others alone."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from streamclf.audio.resample import Resampler
from streamclf.audio.ring import RingBuffer
from streamclf.features.framer import HOP_FRAMES, LogMelFramer
from streamclf.streams import (
    ARRIVAL_SLACK_S,
    MAX_UNREAD_S,
    Stream,
    StreamWorker,
    WindowQueue,
    stream_workers,
)

RATE = 44100
BLOCK = 1024  # a sound card's callback


def new_stream(stream_id: str, *, state: str) -> Stream:
    """A stream with an empty 10 s ring, its source in `state`."""
    return Stream(stream_id=stream_id, source=SimpleNamespace(state=state),
                  ring=RingBuffer(10 * RATE, 2), resampler=Resampler(RATE, 2),
                  framer=LogMelFramer(hop_frames=HOP_FRAMES),
                  windows=WindowQueue(100, threading.Condition()), smoother=None, health=None)


def write_noise(ring: RingBuffer, seconds: float, *, seed: int = 0) -> None:
    """`seconds` of noise in a card's blocks, stamped with stream time as the clock."""
    audio = np.random.default_rng(seed).uniform(-0.5, 0.5, (round(seconds * RATE), 2))
    for start in range(0, len(audio), BLOCK):
        block = audio[start : start + BLOCK].astype(np.float32)
        ring.write(block, arrival=(start + len(block)) / RATE)


def ended_stream(stream_id: str, *, seconds: int, seed: int = 0) -> Stream:
    """A stream whose source ended after writing `seconds` of noise."""
    stream = new_stream(stream_id, state="ended")
    write_noise(stream.ring, seconds, seed=seed)
    return stream


def queued(stream: Stream) -> list:
    with stream.windows._ready:
        return stream.windows.take_all()[0]


@pytest.mark.timeout(60)
def test_a_backlog_keeps_each_windows_arrival():
    """8 s of audio already in the ring (the worker was late): each window's arrival is that
    of the block holding its last sample, not that of the newest audio of a large read."""
    stream = ended_stream("s", seconds=8)
    worker = StreamWorker([stream], threading.Event(), name="stream-worker-0")
    worker.start()
    worker.join(30)
    taken = queued(stream)
    assert len(taken) >= 5
    for window in taken[:-1]:  # the last may come from the end-of-stream flush
        late = window.arrival - window.t_end_s
        # the audio of its last frame, soxr's look-ahead and one block, then the slack at most
        assert 0 <= late <= ARRIVAL_SLACK_S + 0.1, (window.index, late)


@pytest.mark.timeout(60)
def test_one_worker_serves_several_streams_to_their_end():
    """Each stream gets the windows of its own audio (the same as served alone) and is marked
    finished when its source has ended; the worker then ends."""
    streams = [ended_stream(f"s{k}", seconds=4 + k, seed=k) for k in range(3)]
    alone = ended_stream("s1", seconds=5, seed=1)
    StreamWorker([alone], threading.Event(), name="alone").run()
    worker = StreamWorker(streams, threading.Event(), name="stream-worker-0")
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    assert all(stream.finished.is_set() for stream in streams)
    taken = [queued(stream) for stream in streams]
    assert len(taken[0]) < len(taken[1]) < len(taken[2])
    together, single = taken[1], queued(alone)
    assert len(together) == len(single)
    for a, b in zip(together, single, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)


@pytest.mark.timeout(60)
def test_a_stream_is_read_when_its_next_window_is_in():
    """A live stream's ring is left alone while its next window's audio is still coming (each
    pass costs Python calls), read once it is in, and read anyway after MAX_UNREAD_S (its
    loudness stays current)."""
    stream = new_stream("s", state="running")
    stop = threading.Event()
    worker = StreamWorker([stream], stop, name="stream-worker-0")
    write_noise(stream.ring, 1.0)
    stream.audio_at = time.monotonic()
    worker.start()
    try:
        time.sleep(0.3)
        assert stream.ring.consumed == 0  # 1 s in, the first window needs 3 s
        time.sleep(MAX_UNREAD_S + 0.5)  # the worker looks again every MAX_IDLE_S
        assert stream.ring.consumed > 0  # unread for MAX_UNREAD_S: read all the same
        write_noise(stream.ring, 2.5, seed=1)
        deadline = time.monotonic() + 10
        while not len(stream.windows) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(stream.windows) == 1 and stream.ring.consumed > RATE
    finally:
        stop.set()
        stream.ring.wake()
        worker.join(10)


class BrokenFramer(LogMelFramer):
    def push(self, audio, arrival):
        raise RuntimeError("a stage failed")


@pytest.mark.timeout(60)
def test_a_failing_stream_leaves_the_others_alone():
    """Its stages raise: it is logged, its `worker_beat` stops (it reads as stalled, never as
    finished), and the stream beside it still gets all its windows."""
    broken, healthy = ended_stream("broken", seconds=4), ended_stream("healthy", seconds=4)
    broken.framer = BrokenFramer(hop_frames=HOP_FRAMES)
    worker = StreamWorker([broken, healthy], threading.Event(), name="stream-worker-0")
    worker.start()
    worker.join(30)
    assert healthy.finished.is_set() and len(queued(healthy)) >= 2
    assert not broken.finished.is_set()
    assert broken.stalled(broken.worker_beat + 10) == "worker"


def test_streams_are_dealt_out_one_worker_per_core():
    streams = [ended_stream(f"s{k}", seconds=1) for k in range(5)]
    workers = stream_workers(streams, threading.Event(), cores=2)
    assert [len(w._feeds) for w in workers] == [3, 2]
    assert streams[0].ring.wakeup is streams[2].ring.wakeup is not streams[1].ring.wakeup
    assert len(stream_workers(streams[:1], threading.Event(), cores=4)) == 1
