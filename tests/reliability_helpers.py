"""What the reliability tests add to the daemon harness (`streamclf.testing`): the daemon's
children, windows missing from a feed, fault-injecting engine wrappers, and the stdin PCM
reader's oracle (shared by the hypothesis test and tools/fuzz.py).

Every reliability test runs the real thing: ``streamclf serve`` in its own process on a config
written for the test (`streamclf.testing.daemon`), a real ZeroMQ subscriber on an ipc://
endpoint, real ONNX Runtime. Only the two engine faults (a raising batch, an engine slower than
real time) wrap the real window runner in-process, because no honest way exists to make the real
engine fail from outside.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from paced_wav_server import PacedWavServer  # noqa: F401 — the tests import it from here

from streamclf.audio.pcm import PCM_FORMATS, StdinSource
from streamclf.audio.ring import RingBuffer
from streamclf.feed.schema import GenreMessage
from streamclf.testing.daemon import wait_for

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "streamclf" / "data" / "clip.ogg"
EXIT_PROMISE_S = 2.0  # docs/reliability.md: SIGTERM → exit within 2 s


def children_named(pid: int, name: str) -> list[int]:
    """Direct child processes of ``pid`` whose command name is ``name`` (e.g. the ffmpeg reader)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and comm == name:
            found.append(int(entry.name))
    return found


# -- the feed ---------------------------------------------------------------------------------


def t1_steps_missing(messages: list[GenreMessage], hop_s: float) -> int:
    """Windows missing between consecutive genre messages of one stream, from their stream times
    (a drop shows as a t1 step of k hops: k - 1 windows are missing)."""
    t1 = np.array([m.t1 for m in messages])
    if t1.size < 2:
        return 0
    return int(np.sum(np.round(np.diff(t1) / hop_s) - 1))


# -- the stdin PCM reader -----------------------------------------------------------------------


class ShortReads(io.RawIOBase):
    """A pipe that hands out its bytes in the given read sizes (cycled), as pipes do."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = memoryview(data)
        self._sizes = sizes
        self._at = 0
        self._reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = min(len(buffer), self._sizes[self._reads % len(self._sizes)])
        self._reads += 1
        chunk = self._data[self._at : self._at + size]
        buffer[: len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)


def check_stdin_reader(data: bytes, *, fmt: str, channels: int, blocksize: int,
                       sizes: list[int]) -> None:
    """Raw PCM through ``StdinSource`` from a pipe that hands it out in ``sizes`` pieces: the
    whole frames come out exactly (non-finite floats as 0, counted), a trailing partial frame is
    dropped, and the source ends by itself (within 10 s: a hang fails too)."""
    dtype = PCM_FORMATS[fmt]
    frames = len(data) // (dtype.itemsize * channels)
    source = StdinSource(sample_rate=16000, channels=channels, fmt=fmt,
                         stream=ShortReads(data, sizes), blocksize=blocksize)  # fmt: skip
    source.open()
    ring = RingBuffer(max(frames, 1), channels)
    source.start(ring)
    assert wait_for(lambda: source.state == "ended", timeout_s=10, interval_s=0.001), source.state
    source.stop()
    out = np.zeros((max(frames, 1), channels), np.float32)
    n, _ = ring.read(out)
    expected = np.frombuffer(data, dtype, count=frames * channels).reshape(frames, channels)
    expected = expected.astype(np.float32) * (np.float32(1 / 32768) if fmt == "s16le" else 1)
    finite = np.isfinite(expected)
    assert n == frames
    np.testing.assert_array_equal(out[:n], np.where(finite, expected, 0))
    assert source.nonfinite_samples == np.count_nonzero(~finite)


# -- engine faults (in-process only) ------------------------------------------------------------


class FaultyRunner:
    """The real window runner (engine plus incremental features) with faults switched by the
    test: while ``failing``, every ``run`` call (one batch) raises; ``delay_per_window_s`` of
    sleep per window makes it slower than real time. Everything else passes through, so
    batching, outputs and latencies are the real engine's."""

    def __init__(self, runner, *, delay_per_window_s: float = 0.0) -> None:
        self._runner = runner
        self.delay_per_window_s = delay_per_window_s
        self.failing = False
        self.calls = 0
        self.failed_calls = 0

    def run(self, items):
        self.calls += 1
        if self.delay_per_window_s:
            time.sleep(self.delay_per_window_s * len(items))
        if self.failing:
            self.failed_calls += 1
            msg = f"injected fault on call {self.calls}"
            raise RuntimeError(msg)
        return self._runner.run(items)

    def __getattr__(self, name: str):
        return getattr(self._runner, name)
