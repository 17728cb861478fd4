"""`[engine] workers`: several engine workers, each with its own runner and its share of the
streams, publish what one worker does. Four file streams through the real pipeline, ONNX
Runtime and the feed fan-out, once with one worker and once with two."""

from __future__ import annotations

import threading

import pytest
import soundfile as sf
from audio_helpers import CLIP_PATH

from streamclf.backends.onnx import default_threads
from streamclf.config import load_config
from streamclf.features.framer import load_mono_16k
from streamclf.feed.schema import GenreMessage
from streamclf.pipeline import Pipeline
from streamclf.testing.daemon import write_config

STREAMS = 4


class StreamsSeen:
    """The real runner, recording which streams it ran on which thread (the self-test's windows
    at start left out)."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.streams: set[str] = set()
        self.threads: set[str] = set()

    def run(self, items):
        streams = {stream_id for stream_id, _ in items} - {"self-test"}
        if streams:
            self.streams |= streams
            self.threads.add(threading.current_thread().name)
        return self._runner.run(items)

    def __getattr__(self, name: str):
        return getattr(self._runner, name)


def _run(tmp_path, workers: int) -> tuple[list, list[StreamsSeen], Pipeline]:
    wav = tmp_path / "clip8s.wav"
    sf.write(wav, load_mono_16k(CLIP_PATH)[: 8 * 16000], 16000)
    cfg = write_config(tmp_path, name=f"workers-{workers}.toml",
                       engine={"kind": "onnxruntime", "workers": workers, "threads": 1},
                       framing={"hop_s": 1.0, "queue_windows": 64},
                       streams=[{"id": f"s{k}", "source": "file", "path": wav, "realtime": False}
                                for k in range(STREAMS)])
    seen: list[StreamsSeen] = []

    def wrap(runner):
        seen.append(StreamsSeen(runner))
        return seen[-1]

    pipeline = Pipeline(load_config(cfg.path), publish=False, view=True, runner_wrapper=wrap)
    pipeline.start()
    try:
        assert pipeline.all_finished.wait(90)
    finally:
        pipeline.stop()
    messages = []
    while not pipeline.view_messages.empty():
        messages.append(pipeline.view_messages.get())
    return messages, seen, pipeline


def _genre_by_stream(messages) -> dict[str, list[tuple]]:
    by_stream: dict[str, list[tuple]] = {}
    for m in messages:
        if isinstance(m, GenreMessage):
            by_stream.setdefault(m.stream, []).append((m.t0, m.t1, m.genre, m.confidence, m.top))
    return by_stream


@pytest.mark.timeout(240)
def test_two_workers_publish_what_one_does(tmp_path):
    one, _, _ = _run(tmp_path, workers=1)
    two, seen, pipeline = _run(tmp_path, workers=2)
    # each runner ran its own half of the streams (its state per stream stays with it), on its
    # own worker thread
    assert len(pipeline.runners) == 2
    assert [s.streams for s in seen] == [{"s0", "s2"}, {"s1", "s3"}]
    assert [s.threads for s in seen] == [{"engine-0"}, {"engine-1"}]
    # the same windows, genres and probabilities per stream as with one worker
    expected, got = _genre_by_stream(one), _genre_by_stream(two)
    assert set(got) == {f"s{k}" for k in range(STREAMS)}
    for stream, rows in expected.items():
        assert len(rows) >= 5, stream  # 8 s at hop 1 s, the grid's phase spread over the hop
        assert [r[:3] for r in got[stream]] == [r[:3] for r in rows], stream
        for a, b in zip(got[stream], rows, strict=True):
            assert a[3] == pytest.approx(b[3], abs=1e-6)
    # the feed's numbering stays gap-free per topic, in the order the view got the messages
    seqs: dict[str, list[int]] = {}
    for m in two:
        seqs.setdefault(m.topic, []).append(m.seq)
    assert all(s == list(range(len(s))) for s in seqs.values()), seqs


def test_no_more_workers_than_streams(tmp_path):
    """One stream, `workers = 0` (one per core): one worker, whose runner keeps every core."""
    cfg = write_config(tmp_path, engine={"kind": "onnxruntime", "workers": 0, "threads": 0},
                       streams=[{"id": "a", "source": "file", "path": CLIP_PATH}])
    pipeline = Pipeline(load_config(cfg.path), publish=False)
    pipeline.start()
    pipeline.stop()
    assert pipeline.runners == [pipeline.runner]
    assert pipeline.runner.info.device == f"cpu ({default_threads()} threads)"
