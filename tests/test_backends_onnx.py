"""ONNX Runtime engine on the real converted models: outputs, batch consistency, bad models."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from backends_helpers import FP32_TOLERANCE, card, music_windows
from onnx import TensorProto, helper

from streamclf.backends import load_engine
from streamclf.backends.onnx import OnnxEngine
from streamclf.errors import ModelError
from streamclf.models.card import load_model_card

MODELS = ("MSD_musicnn", "MTT_vgg")


@pytest.fixture(scope="module", params=MODELS)
def engine(request: pytest.FixtureRequest) -> OnnxEngine:
    engine = load_engine(card(request.param), "onnxruntime")
    yield engine
    engine.close()


class TestOnnxEngine:
    """The engine follows the contract: shapes, probabilities, and any batch gives the same rows."""

    def test_describes_itself(self, engine: OnnxEngine) -> None:
        assert engine.name == "onnxruntime"
        assert engine.device.startswith("cpu")
        assert engine.precision == "fp32"
        assert engine.max_batch == 32
        assert engine.info.embedding_dim == card(engine.info.model).embedding_dim

    def test_outputs_follow_the_contract(self, engine: OnnxEngine) -> None:
        out = engine.infer(music_windows(3))
        assert out["tags"].shape == (3, 50) and out["tags"].dtype == np.float32
        assert out["embedding"].shape == (3, engine.info.embedding_dim)
        assert np.all((out["tags"] >= 0) & (out["tags"] <= 1))
        assert np.ptp(out["tags"], axis=0).max() > 1e-3  # different music, different tags

    def test_batch_1_8_32_agree(self, engine: OnnxEngine) -> None:
        windows = music_windows(32)
        full = engine.infer(windows)
        eights = [engine.infer(windows[i : i + 8]) for i in range(0, 32, 8)]
        singles = [engine.infer(windows[i : i + 1]) for i in range(0, 32, 4)]
        for name in ("tags", "embedding"):
            np.testing.assert_allclose(
                np.concatenate([o[name] for o in eights]), full[name], atol=FP32_TOLERANCE
            )
            np.testing.assert_allclose(
                np.concatenate([o[name] for o in singles]), full[name][::4], atol=FP32_TOLERANCE
            )

    def test_matches_the_tensorflow_reference(self) -> None:
        """The engine runs what musicnn runs: the clip's first patches against the TF taggram."""
        from backends_helpers import LOGMEL

        with np.load(LOGMEL) as fixture, np.load(LOGMEL.parent / "MSD_musicnn.npz") as ref:
            engine = load_engine(card("MSD_musicnn"), "onnxruntime")
            tags = engine.infer(fixture["batch"])["tags"]
            np.testing.assert_allclose(tags, ref["taggram"][: len(tags)], atol=1e-3)

    def test_warmup_changes_no_result(self, engine: OnnxEngine) -> None:
        """Warm-up pushes zero batches of every size the daemon uses through the session; what a
        caller gets afterwards is what it got before (no state, no buffer left dirty)."""
        windows = music_windows(2)
        before = engine.infer(windows)["tags"]
        engine.warmup()
        after = engine.infer(windows)["tags"]
        assert after.shape == (2, engine.info.n_tags) and np.all(np.isfinite(after))
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)

    @pytest.mark.parametrize("shape", [(0, 187, 96), (33, 187, 96), (2, 96, 187), (187, 96)])
    def test_bad_batch_shape_is_refused(self, engine: OnnxEngine, shape: tuple[int, ...]) -> None:
        with pytest.raises(ValueError, match="batch shape"):
            engine.infer(np.zeros(shape, np.float32))

    def test_float64_input_is_converted(self, engine: OnnxEngine) -> None:
        windows = music_windows(2)
        np.testing.assert_allclose(
            engine.infer(windows.astype(np.float64))["tags"],
            engine.infer(windows)["tags"],
            atol=1e-6,
        )


def _write_model(
    path: Path, *, frames: int = 187, tags: int = 50, input_name: str = "logmel"
) -> Path:
    """A small valid ONNX graph with the given input/output shape: flatten, matmul, sigmoid."""
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", frames, 96])
    y = helper.make_tensor_value_info("tags", TensorProto.FLOAT, ["batch", tags])
    e = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])
    w1 = helper.make_tensor(
        "w1", TensorProto.FLOAT, [frames * 96, 8], np.zeros(frames * 96 * 8, np.float32)
    )
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [8, tags], np.zeros(8 * tags, np.float32))
    nodes = [
        helper.make_node("Flatten", [input_name], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w1"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w2"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["tags"]),
    ]
    graph = helper.make_graph(nodes, "wrong", [x], [y, e], initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class TestBadModels:
    """A corrupt or mis-shaped model is a ModelError with one line naming the file and problem."""

    def test_truncated_copy(self, tmp_path: Path) -> None:
        truncated = tmp_path / "MSD_musicnn.onnx"
        data = card("MSD_musicnn").onnx_path.read_bytes()
        truncated.write_bytes(data[: len(data) // 2])
        with pytest.raises(ModelError, match="cannot load ONNX model") as err:
            load_engine(truncated, "onnxruntime")
        assert str(truncated) in str(err.value) and "\n" not in str(err.value)

    def test_not_onnx_at_all(self, tmp_path: Path) -> None:
        path = tmp_path / "x.onnx"
        shutil.copy(card("MSD_musicnn").card_path, path)  # a JSON file with an .onnx name
        with pytest.raises(ModelError, match="cannot load ONNX model"):
            load_engine(path, "onnxruntime")

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ModelError, match="not found"):
            load_engine(tmp_path / "absent.onnx", "onnxruntime")

    def test_wrong_input_frames(self, tmp_path: Path) -> None:
        path = _write_model(tmp_path / "wrong.onnx", frames=128)
        with pytest.raises(ModelError, match=r"input 'logmel' has shape \['batch', 128, 96\]"):
            load_engine(path, "onnxruntime")

    def test_tag_count_must_match_the_card(self, tmp_path: Path) -> None:
        """Any fixed tag width loads (families, trained heads), but not one that differs from the
        card."""
        path = _write_model(tmp_path / "ten.onnx", tags=10)
        engine = load_engine(path, "onnxruntime")
        assert engine.infer(np.zeros((2, 187, 96), np.float32))["tags"].shape == (2, 10)
        engine.close()
        card = dataclasses.replace(load_model_card("MSD_musicnn"), onnx_path=path)
        with pytest.raises(ModelError, match="gives 10 tag probabilities but its card lists 50"):
            load_engine(card, "onnxruntime")

    def test_wrong_input_name(self, tmp_path: Path) -> None:
        path = _write_model(tmp_path / "wrong.onnx", input_name="mel")
        with pytest.raises(ModelError, match="expected one input 'logmel', found: mel"):
            load_engine(path, "onnxruntime")

    def test_a_well_formed_small_model_loads(self, tmp_path: Path) -> None:
        """The checks above fail for the shape, not because the hand-made graph is broken."""
        engine = load_engine(_write_model(tmp_path / "ok.onnx"), "onnxruntime")
        assert engine.infer(np.zeros((2, 187, 96), np.float32))["tags"].shape == (2, 50)


def test_interrupt_ends_the_running_call_and_every_later_one() -> None:
    """Pipeline.stop() interrupts the engine, so that its worker leaves a long call at once."""
    engine = load_engine(card(), "onnxruntime", max_batch=8)
    windows = music_windows(8)
    interrupter = threading.Timer(0.05, engine.interrupt)
    interrupter.start()
    with pytest.raises(Exception, match="terminate flag"):
        for _ in range(1000):  # far longer than 0.05 s: the interrupt lands in one of these
            engine.infer(windows)
    interrupter.join()
    with pytest.raises(Exception, match="terminate flag"):
        engine.infer(windows[:1])
