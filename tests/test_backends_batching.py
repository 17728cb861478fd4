"""run_batched: windows ready together go through the engine as batches of at most max_batch."""

from __future__ import annotations

import numpy as np
import pytest
from backends_helpers import FP32_TOLERANCE, card, music_windows

from streamclf.backends import load_engine, new_batch_buffer, run_batched
from streamclf.backends.base import Engine


class CountingEngine:
    """The real ONNX Runtime engine, recording the batch sizes it is handed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.info = engine.info
        self.max_batch = engine.max_batch
        self.batches: list[int] = []

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(len(batch))
        return self.engine.infer(batch)


@pytest.fixture(scope="module")
def small_engine() -> Engine:
    return load_engine(card("MTT_musicnn"), "onnxruntime", max_batch=4)


@pytest.fixture(scope="module")
def reference(small_engine: Engine) -> dict[str, np.ndarray]:
    """Each of 11 windows inferred alone."""
    singles = [small_engine.infer(w[None]) for w in music_windows(11)]
    return {name: np.concatenate([s[name] for s in singles]) for name in ("tags", "embedding")}


class TestRunBatched:
    """Same rows as one-by-one inference, in input order, in chunks of at most max_batch."""

    @pytest.mark.parametrize(("n", "batches"), [(1, [1]), (4, [4]), (5, [4, 1]), (11, [4, 4, 3])])
    def test_splits_and_keeps_order(
        self, small_engine: Engine, reference: dict[str, np.ndarray], n: int, batches: list[int]
    ) -> None:
        counting = CountingEngine(small_engine)
        out = run_batched(counting, list(music_windows(n)))
        assert counting.batches == batches
        for name in ("tags", "embedding"):
            np.testing.assert_allclose(out[name], reference[name][:n], atol=FP32_TOLERANCE)

    def test_no_windows(self, small_engine: Engine) -> None:
        out = run_batched(small_engine, [])
        assert out["tags"].shape == (0, 50) and out["embedding"].shape == (0, 200)

    def test_reused_buffer_does_not_leak_between_calls(
        self, small_engine: Engine, reference: dict[str, np.ndarray]
    ) -> None:
        buffer = new_batch_buffer(small_engine.max_batch)
        windows = music_windows(11)
        first = run_batched(small_engine, list(windows[:4]), buffer=buffer)
        second = run_batched(small_engine, list(windows[4:6]), buffer=buffer)
        np.testing.assert_allclose(first["tags"], reference["tags"][:4], atol=FP32_TOLERANCE)
        np.testing.assert_allclose(second["tags"], reference["tags"][4:6], atol=FP32_TOLERANCE)
        assert first["tags"] is not second["tags"]

    def test_wrong_window_shape(self, small_engine: Engine) -> None:
        with pytest.raises(ValueError, match=r"window 1 has shape \(96,\)"):
            run_batched(small_engine, [np.zeros((187, 96), np.float32), np.zeros(96, np.float32)])


def test_no_windows_on_a_model_with_other_tag_width() -> None:
    """The empty result has the model's own tag width (the fused model has 14 families)."""
    engine = load_engine(card("fused_musicnn"), "onnxruntime")
    assert engine.info.n_tags == 14
    out = run_batched(engine, [])
    assert out["tags"].shape == (0, 14) and out["embedding"].shape == (0, engine.info.embedding_dim)
    assert run_batched(engine, list(music_windows(3)))["tags"].shape == (3, 14)
