"""Engine faults: a batch that raises, an engine slower than real time, a broken model file.

The first two wrap the real window runner (ONNX Runtime) in-process (tests/reliability_helpers.py
FaultyRunner, passed to Pipeline as its runner_wrapper); the broken model runs the real
``streamclf serve`` and checks its exit code (docs/reliability.md, docs/cli.md).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time

import numpy as np
import pytest
from e2e_helpers import one_line_error
from reliability_helpers import CLIP, REPO, FaultyRunner, t1_steps_missing
from structlog.testing import capture_logs

from streamclf.config import load_config
from streamclf.errors import ModelError
from streamclf.features.mel import HOP_LENGTH, SAMPLE_RATE_HZ, frames_for_seconds
from streamclf.feed.schema import GenreMessage
from streamclf.models.card import sha256_file
from streamclf.pipeline import Pipeline
from streamclf.testing.daemon import START_TIMEOUT_S, Daemon, wait_for, write_config
from streamclf.testing.feed import FeedRecorder


def hop_as_framed_s(hop_s: float) -> float:
    return frames_for_seconds(hop_s) * HOP_LENGTH / SAMPLE_RATE_HZ


@contextlib.contextmanager
def faulty_pipeline(tmp_path, *, hop_s: float, delay_per_window_s: float = 0.0, **config):
    """A real-time looped clip through a Pipeline whose runner is wrapped by FaultyRunner;
    yields (pipeline, faulty runner, feed recorder)."""
    cfg = write_config(tmp_path, streams=[{"id": "a", "source": "file", "path": str(CLIP),
                                           "loop": True}],
                       framing={"hop_s": hop_s, **config.pop("framing", {})}, **config)  # fmt: skip
    wrapped: list[FaultyRunner] = []

    def wrap(runner):
        wrapped.append(FaultyRunner(runner, delay_per_window_s=delay_per_window_s))
        return wrapped[0]

    pipeline = Pipeline(load_config(cfg.path), runner_wrapper=wrap)
    with FeedRecorder(cfg.endpoint) as feed:
        pipeline.start()
        try:
            assert feed.wait(lambda: feed.genre_count("a") >= 1, timeout_s=START_TIMEOUT_S)
            yield pipeline, wrapped[0], feed
        finally:
            pipeline.stop()


class TestEngineRaises:
    """A raising batch is dropped and counted, logged once per burst; the pipeline carries on."""

    def test_two_bursts(self, tmp_path):
        hop_s = 0.25
        with capture_logs() as logs, faulty_pipeline(tmp_path, hop_s=hop_s) as (_, engine, feed):
            for _burst in range(2):
                engine.failing = True
                before = engine.failed_calls
                assert wait_for(lambda: engine.failed_calls >= before + 3,  # noqa: B023
                                timeout_s=30)
                engine.failing = False
                published = feed.genre_count("a")
                assert feed.wait(lambda: feed.genre_count("a") >= published + 3,  # noqa: B023
                                 timeout_s=30)  # fmt: skip
        failures = [e for e in logs if e["event"] == "engine_batch_failed"]
        assert len(failures) == 2, failures
        assert all("injected fault" in e["error"] for e in failures)
        final = feed.final_status("a")
        assert final is not None and final.final
        # every failed call lost its whole batch (>= 1 window), and nothing else was lost
        assert final.dropped_windows >= engine.failed_calls >= 6
        genre = feed.of(GenreMessage, "a")
        assert t1_steps_missing(genre, hop_as_framed_s(hop_s)) == final.dropped_windows
        assert feed.seq_gaps() == {} and feed.lost == 0


class TestOverload:
    """An engine at 4 windows/s fed 10 windows/s: the queue drops oldest-first and counts,
    latency stays bounded and the queue never exceeds its capacity."""

    QUEUE_WINDOWS = 4
    LATENCY_BOUND_MS = 6000.0  # with no bound on the queue it would pass 15 s within the run

    def test_slow_engine(self, tmp_path):
        hop_s = 0.1
        # 0.25 s per window: 4 windows/s against the 10 a 0.1 s hop makes
        framing = {"queue_windows": self.QUEUE_WINDOWS}
        with faulty_pipeline(tmp_path, hop_s=hop_s, delay_per_window_s=0.25,
                             framing=framing) as (pipeline, _, feed):  # fmt: skip
            queue = pipeline.streams[0].windows
            longest = 0
            published = feed.genre_count("a")
            deadline = time.monotonic() + 120  # a feed that stops fails the test, not hangs it
            while feed.genre_count("a") < published + 30:
                assert time.monotonic() < deadline, "30 more windows never came"
                longest = max(longest, len(queue))
                wait_for(lambda: False, timeout_s=0.02)
            # no more audio: the engine works off its queue, so that every drop lies before a
            # published window (a stop interrupts the call in flight; drops behind it would be
            # counted but invisible in the feed's t1 steps)
            pipeline.streams[0].source.stop()

            def settled() -> bool:
                published = feed.genre_count("a")
                time.sleep(1.5)  # longer than one engine call (4 windows x 0.25 s)
                return len(queue) == 0 and feed.genre_count("a") == published

            assert wait_for(settled, timeout_s=30)
        assert longest <= self.QUEUE_WINDOWS
        genre = feed.of(GenreMessage, "a")
        final = feed.final_status("a")
        assert final is not None and final.dropped_windows > 30
        # every window missing from the feed is one the daemon counted as dropped
        assert t1_steps_missing(genre, hop_as_framed_s(hop_s)) == final.dropped_windows
        latencies = np.array([m.latency_ms for m in genre])
        assert latencies.max() < self.LATENCY_BOUND_MS, latencies
        # no upward trend: the last third is no slower than the whole run's bound says
        assert np.median(latencies[-10:]) < self.LATENCY_BOUND_MS / 2
        assert feed.seq_gaps() == {}


# -- a broken model file: a clear error at start, exit code 4 -------------------------------


def _wrong_shape_onnx(path) -> None:
    """A valid ONNX model whose input is [batch, 100, 96] instead of [batch, 187, 96]."""
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [96, 50], np.zeros(96 * 50, np.float32))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["logmel"], ["pooled"], axes=[1], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["tags"]),
         helper.make_node("Identity", ["pooled"], ["embedding"])],
        "wrong_shape",
        [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, ["batch", 100, 96])],
        [helper.make_tensor_value_info("tags", TensorProto.FLOAT, ["batch", 50]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 96])],
        initializer=[weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what every ONNX Runtime release reads
    onnx.save(model, path)


def _broken_model(folder, fault: str):
    """A copy of MSD_musicnn with one fault; its card points at it (and, except for
    'truncated', carries the broken file's sha256, so the ONNX loader itself must notice)."""
    onnx_path = folder / "broken.onnx"
    source = REPO / "engines" / "MSD_musicnn.onnx"
    if fault == "truncated":
        onnx_path.write_bytes(source.read_bytes()[:100_000])
    elif fault == "garbage":
        onnx_path.write_bytes(np.random.default_rng(7).bytes(200_000))
    else:
        _wrong_shape_onnx(onnx_path)
    card = json.loads((REPO / "engines" / "MSD_musicnn.json").read_text())
    card["onnx"]["file"] = onnx_path.name
    if fault != "truncated":
        card["onnx"]["sha256"] = sha256_file(onnx_path)
    onnx_path.with_suffix(".json").write_text(json.dumps(card))
    return onnx_path


@pytest.mark.parametrize(("fault", "says"), [
    ("truncated", "does not match its card"),
    ("garbage", "cannot load ONNX model"),
    ("wrong_shape", "expected [batch, 187, 96]"),
])  # fmt: skip
def test_broken_model_is_a_clear_error_at_start(tmp_path, fault, says):
    model = _broken_model(tmp_path, fault)
    cfg = write_config(tmp_path, engine={"model": str(model)},
                       streams=[{"id": "a", "source": "file", "path": str(CLIP)}])
    with Daemon(cfg) as daemon:
        line = one_line_error(daemon.wait(120), daemon.stderr_text(), ModelError.exit_code)
    assert ModelError.exit_code == 4 and says in line, line
    shutil.rmtree(tmp_path, ignore_errors=True)
