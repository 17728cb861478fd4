"""A stream worker's passes: windows stamped with the arrival of their own audio, even from a
backlog it reads in large passes."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from streamclf.audio.resample import Resampler
from streamclf.audio.ring import RingBuffer
from streamclf.features.framer import HOP_FRAMES, LogMelFramer
from streamclf.streams import ARRIVAL_SLACK_S, Stream, StreamWorker, WindowQueue

RATE = 44100
BLOCK = 1024  # a sound card's callback


@pytest.mark.timeout(60)
def test_a_backlog_keeps_each_windows_arrival():
    """8 s of audio already in the ring (the worker was late): each window's arrival is that
    of the block holding its last sample, not that of the newest audio of a large read."""
    ring = RingBuffer(10 * RATE, 2)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (8 * RATE, 2)).astype(np.float32)
    for start in range(0, len(audio), BLOCK):
        block = audio[start : start + BLOCK]
        ring.write(block, arrival=(start + len(block)) / RATE)  # stream time as the clock
    windows = WindowQueue(100, threading.Condition())
    stream = Stream(stream_id="s", source=SimpleNamespace(state="ended"), ring=ring,
                    resampler=Resampler(RATE, 2), framer=LogMelFramer(hop_frames=HOP_FRAMES),
                    windows=windows, smoother=None, health=None)
    worker = StreamWorker(stream, threading.Event())
    worker.start()
    worker.join(30)
    with windows._ready:
        taken, _ = windows.take_all()
    assert len(taken) >= 5
    for window in taken[:-1]:  # the last may come from the end-of-stream flush
        late = window.arrival - window.t_end_s
        # the audio of its last frame, soxr's look-ahead and one block, then the slack at most
        assert 0 <= late <= ARRIVAL_SLACK_S + 0.1, (window.index, late)
