"""Incremental inference equals full-window inference on real music, whatever the hops and
batches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from incremental_helpers import assert_same_outputs, reference, window_at, windows_at

from streamclf.backends.incremental import IncrementalCounters, IncrementalRunner
from streamclf.backends.runner import FullWindowRunner, load_engine
from streamclf.features.framer import LogMelFramer, load_mono_16k, logmel_windows_for_file
from streamclf.features.mel import logmel as logmel_of
from streamclf.models.card import load_model_card
from streamclf.testing.daemon import rss_mb

CLIP_PATH = Path(__file__).resolve().parent.parent / "streamclf" / "data" / "clip.ogg"
CORE_FRAMES = 181
MAX_BATCH = 8


@pytest.fixture(scope="module")
def card():
    return load_model_card("MSD_musicnn")


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return load_mono_16k(CLIP_PATH)


@pytest.fixture(scope="module")
def logmel(audio) -> np.ndarray:
    return logmel_of(audio)


@pytest.fixture(scope="module")
def full(card) -> FullWindowRunner:
    return FullWindowRunner(load_engine(card, "onnxruntime", max_batch=MAX_BATCH))


@pytest.fixture(scope="module")
def full_fused() -> FullWindowRunner:
    return FullWindowRunner(load_engine(load_model_card("fused_musicnn"), "onnxruntime",
                                        max_batch=MAX_BATCH))


@pytest.fixture(scope="module")
def loaded_runner(card) -> IncrementalRunner:
    return IncrementalRunner(card, max_batch=MAX_BATCH)


@pytest.fixture
def runner(loaded_runner) -> IncrementalRunner:
    """The module's runner with no streams and zeroed counters."""
    loaded_runner.reset()
    loaded_runner.counters = IncrementalCounters()
    return loaded_runner


class TestExactness:
    """Outputs equal full windows within 1e-5 on every tag and embedding value."""

    @pytest.mark.parametrize("hop", [31, 62, 93])
    def test_daemon_hops(self, runner, full, logmel, hop):
        windows = windows_at(logmel, hop=hop, count=8)
        got = runner.run([("s", w) for w in windows])
        assert_same_outputs(got, reference(full, windows))

    def test_random_hops_offsets_and_batches(self, runner, full, logmel, rng):
        """Hops from 1 frame to beyond a window, any start, windows handed over in random blocks."""
        for hop in (1, 5, 17, 62, 180, 181, 186, 187, 250):
            windows = windows_at(logmel, hop=hop, first=int(rng.integers(0, 100)),
                                 count=int(rng.integers(1, 6)))
            runner.reset("s")
            outputs, at = [], 0
            while at < len(windows):
                block = int(rng.integers(1, 2 * MAX_BATCH))  # blocks above max_batch are chunked
                outputs.append(runner.run([("s", w) for w in windows[at : at + block]]))
                at += block
            got = {k: np.concatenate([o[k] for o in outputs]) for k in ("tags", "embedding")}
            assert_same_outputs(got, reference(full, windows))

    def test_streams_interleaved_in_one_batch(self, runner, full, logmel, rng):
        """Three streams at different hops, phases and content share each batch."""
        reversed_logmel = np.ascontiguousarray(logmel[::-1])
        streams = {
            "a": windows_at(logmel, hop=31, count=9),
            "b": windows_at(logmel, hop=62, first=7, count=9),
            "c": windows_at(reversed_logmel, hop=31, first=3, count=9),
        }
        for step in range(0, 9, 3):
            pending = {sid: iter(ws[step : step + 3]) for sid, ws in streams.items()}
            order = rng.permutation([sid for sid in streams for _ in range(3)])
            items = [(sid, next(pending[sid])) for sid in order]  # each stream still in order
            got = runner.run(items)
            assert_same_outputs(got, reference(full, [w for _, w in items]))
        assert runner.counters.frames_reused > 0

    def test_framer_blocks_of_random_size(self, runner, full, audio, rng):
        """The daemon path: audio pushed in random blocks through the framer, windows as they
        come."""
        framer = LogMelFramer(187, 31)
        windows, got = [], []
        at = 0
        while at < audio.shape[0] // 2:
            block = int(rng.integers(1, 20000))
            ready = list(framer.push(audio[at : at + block]))
            at += block
            if ready:
                windows += ready
                got.append(runner.run([("live", w) for w in ready]))
        outputs = {k: np.concatenate([o[k] for o in got]) for k in ("tags", "embedding")}
        assert_same_outputs(outputs, reference(full, windows))


def test_fused_default_model(full_fused, logmel):
    """The default model (two taggers and a calibrated head) runs incrementally, exactly."""
    runner = IncrementalRunner(full_fused.engine.info.model, max_batch=MAX_BATCH)
    windows = windows_at(logmel, hop=31, count=10)
    got = runner.run([("s", w) for w in windows])
    assert got["tags"].shape == (10, 14) and got["embedding"].shape == (10, 400)
    assert_same_outputs(got, reference(full_fused, windows))
    assert runner.counters.frames_computed == 181 + 9 * 31


class TestReuse:
    """Only new frames are computed, and reuse stops where it would be unsafe."""

    def test_per_hop_cost(self, runner, logmel):
        hop, count = 31, 10
        runner.run([("s", w) for w in windows_at(logmel, hop=hop, count=count)])
        assert runner.counters.frames_computed == CORE_FRAMES + (count - 1) * hop
        assert runner.counters.restarts == 0

    def test_gap_backwards_and_changed_audio_restart(self, runner, full, logmel):
        windows = [window_at(logmel, s) for s in (0, 62, 500, 562, 100)]  # jump, then backwards
        replaced = window_at(np.ascontiguousarray(logmel[::-1]), 162)  # same index, other audio
        items = [("s", w) for w in windows] + [("s", replaced)]
        outputs = [runner.run([item]) for item in items]  # one at a time, as a live stream
        got = {k: np.concatenate([o[k] for o in outputs]) for k in ("tags", "embedding")}
        assert_same_outputs(got, reference(full, [w for _, w in items]))
        assert runner.counters.restarts == 3
        assert runner.counters.frames_reused == 2 * (CORE_FRAMES - 62)

    def test_reset_forgets_a_stream(self, runner, logmel):
        first, second = windows_at(logmel, hop=62, count=2)
        runner.run([("s", first)])
        runner.reset("s")
        runner.run([("s", second)])
        assert runner.counters.frames_computed == 2 * CORE_FRAMES

    def test_streams_beyond_the_limit_are_forgotten(self, card, logmel):
        runner = IncrementalRunner(card, max_batch=4, max_streams=2)
        first, second = windows_at(logmel, hop=62, count=2)
        runner.run([("a", first), ("b", first), ("c", first)])  # "a" is the oldest: evicted
        runner.run([("a", second), ("c", second)])
        assert runner.counters.frames_computed == 3 * CORE_FRAMES + CORE_FRAMES + 62


def test_classify_and_daemon_agree(runner, full, audio):
    """`classify`'s non-overlapping patches and the daemon's overlapping windows: same tags."""
    patches = logmel_windows_for_file(CLIP_PATH)  # hop 187, what classify runs
    framer = LogMelFramer(187, 17)  # 187 = 11 hops of 17: every 11th daemon window is a patch
    daemon = list(framer.push(audio[: 12 * 16000]))
    got = runner.run([("live", w) for w in daemon])
    by_start = {w.start_frame: i for i, w in enumerate(daemon)}
    shared = [p for p in patches if p.start_frame in by_start]
    assert len(shared) >= 3
    rows = [by_start[p.start_frame] for p in shared]
    assert_same_outputs({k: v[rows] for k, v in got.items()}, reference(full, shared))


def test_memory_stays_where_warmup_left_it(card, logmel, rng):
    """After warm-up, batches of any size from several streams, with restarts, neither grow nor
    shrink the process: each graph only ever sees one input shape, so ONNX Runtime's memory is
    planned once (before, each new batch shape moved RSS by tens of MiB; docs/engines.md)."""
    runner = IncrementalRunner(card, max_batch=MAX_BATCH)
    runner.warmup()
    windows = windows_at(logmel, hop=62)
    at = dict.fromkeys("abcd", 0)

    def random_batch() -> list:
        items = []
        for _ in range(int(rng.integers(1, MAX_BATCH + 1))):
            stream = str(rng.choice(list(at)))
            if rng.random() < 0.05:
                at[stream] = int(rng.integers(len(windows)))  # a jump: that stream restarts
            items.append((stream, windows[at[stream] % len(windows)]))
            at[stream] += 1
        return items

    samples = []
    for batch in range(160):
        runner.run(random_batch())
        if batch % 20 == 19:
            samples.append(rss_mb(os.getpid()))
    assert max(samples) - min(samples) < 2.0, [round(s, 1) for s in samples]


def test_interrupt_ends_every_later_call(card):
    """As the full-window engine's: Pipeline.stop() gets the worker out of the runner at once."""
    runner = IncrementalRunner(card, max_batch=2)
    runner.interrupt()
    with pytest.raises(Exception, match="terminate flag"):
        runner.warmup()
