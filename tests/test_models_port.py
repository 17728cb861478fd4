"""The PyTorch port and the importer: every TF variable lands in the right place, the port
reproduces the TensorFlow taggram, and the import writes the engines that are committed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from models_helpers import (
    EMBEDDING_TOLERANCE,
    MODEL_NAMES,
    TAG_TOLERANCE,
    musicnn_wheel,
    tf_logmel,
    tf_reference,
    write_bundle,
)

from streamclf.errors import ModelError
from streamclf.models.card import load_model_card

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from streamclf.models.importer import (
    import_models,
    is_optimizer_variable,
    load_state,
    load_torch_model,
    musicnn_package,
    variable_map,
)
from streamclf.models.musicnn import build_model, tf_same_padding
from streamclf.models.tfcheckpoint import CheckpointReader


def tf_layout_shape(value_shape: tuple[int, ...], key: str) -> tuple[int, ...]:
    """The shape TF stores for a torch parameter: OIHW → HWIO, OIW → [W, I, 1, O], dense → .T."""
    if len(value_shape) == 4:
        o, i, h, w = value_shape
        return (h, w, i, o)
    if len(value_shape) == 3:
        o, i, w = value_shape
        return (w, i, 1, o)
    return value_shape[::-1] if key.endswith("weight") and len(value_shape) == 2 else value_shape


def synthetic_checkpoint(name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random model variables with musicnn's TF names and layouts, plus Adam slots."""
    state = build_model(name).state_dict()
    tensors = {}
    for key, tf_name in variable_map(name).items():
        value = rng.standard_normal(tf_layout_shape(tuple(state[key].shape), key)).astype(
            np.float32
        )
        tensors[tf_name] = np.abs(value) if "variance" in tf_name else value
        tensors[f"{tf_name}/Adam"] = tensors[f"{tf_name}/Adam_1"] = value
    tensors["beta1_power"] = tensors["beta2_power"] = np.array(0.9, dtype=np.float32)
    return tensors


class TestVariableMapping:
    """Each TF variable maps onto exactly one torch parameter, laid out for torch."""

    @pytest.mark.parametrize("name", MODEL_NAMES)
    def test_map_covers_the_module_one_to_one(self, name):
        state = build_model(name).state_dict()
        mapping = variable_map(name)
        assert set(mapping) == {k for k in state if not k.endswith("num_batches_tracked")}
        assert len(set(mapping.values())) == len(mapping)

    @pytest.mark.parametrize("name", ["MTT_musicnn", "MSD_vgg"])
    def test_synthetic_checkpoint_loads_with_transposed_kernels(self, tmp_path, rng, name):
        tensors = synthetic_checkpoint(name, rng)
        write_bundle(tmp_path / "ckpt", tensors, entries_per_block=16)
        state = load_state(CheckpointReader(tmp_path / "ckpt"), name)
        if name == "MTT_musicnn":
            kernel = tensors["conv2d/kernel"]  # [7, 38, 1, 204]
            assert state["timbral.0.conv.weight"][5, 0, 3, 7] == kernel[3, 7, 0, 5]
            midend = tensors["conv2d_5/kernel"]  # [7, 561, 1, 64]
            assert state["midend.0.conv.weight"][9, 100, 2] == midend[2, 100, 0, 9]
            assert state["dense.weight"][4, 1000] == tensors["dense/kernel"][1000, 4]
            assert torch.equal(
                state["dense_bn.running_var"],
                torch.from_numpy(tensors["batch_normalization_10/moving_variance"]),
            )
        else:
            assert state["convs.1.weight"][7, 3, 0, 2] == tensors["2CNN/kernel"][0, 2, 3, 7]
            assert state["classifier.weight"][1, 200] == tensors["dense/kernel"][200, 1]

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ("missing", "lacks model variables conv2d_3/bias"),
            ("extra", "unexpected model variables conv2d_99/kernel"),
            ("shape", "variable conv2d_3/bias has shape"),
        ],
    )
    def test_incomplete_or_foreign_checkpoints_are_refused(self, tmp_path, rng, change, message):
        tensors = synthetic_checkpoint("MTT_musicnn", rng)
        if change == "missing":
            del tensors["conv2d_3/bias"]
        elif change == "extra":
            tensors["conv2d_99/kernel"] = np.zeros(3, np.float32)
        else:
            tensors["conv2d_3/bias"] = np.zeros(50, np.float32)
        write_bundle(tmp_path / "ckpt", tensors)
        with pytest.raises(ModelError, match=message):
            load_state(CheckpointReader(tmp_path / "ckpt"), "MTT_musicnn")

    def test_optimizer_slots_are_recognised(self):
        assert is_optimizer_variable("conv2d/kernel/Adam_1") and is_optimizer_variable(
            "beta2_power"
        )
        assert not is_optimizer_variable("batch_normalization/beta")


def test_tf_same_padding_puts_the_odd_one_after():
    assert [tf_same_padding(k) for k in (128, 64, 32, 3)] == [(63, 64), (31, 32), (15, 16), (1, 1)]


@pytest.fixture(scope="module")
def package():
    with musicnn_package(musicnn_wheel()) as folder:
        yield folder


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_port_reproduces_the_tensorflow_taggram(package, name):
    """The real checkpoints in the port: tags and embedding within 1e-4 of TensorFlow's."""
    model = load_torch_model(package / name, name)
    batch = tf_logmel()
    ref = tf_reference(name)
    with torch.no_grad():
        tags, embedding = (t.numpy() for t in model(torch.from_numpy(batch)))
    np.testing.assert_allclose(tags, ref["taggram"][: len(batch)], rtol=0, atol=TAG_TOLERANCE)
    np.testing.assert_allclose(
        embedding, ref["embedding"][: len(batch)], rtol=0, atol=EMBEDDING_TOLERANCE
    )


def test_import_rebuilds_the_committed_engines(tmp_path):
    """import_models(wheel) → ONNX files computing what engines/ computes, and complete cards."""
    import onnxruntime as ort

    cards = import_models(musicnn_wheel(), tmp_path, names=["MTT_vgg", "MSD_musicnn"])
    assert [c.name for c in cards] == ["MTT_vgg.json", "MSD_musicnn.json"]
    batch = tf_logmel()
    for path in cards:
        fresh = load_model_card(path)
        shipped = load_model_card(fresh.name)
        assert fresh.document["source"] == shipped.document["source"]
        assert fresh.labels == shipped.labels and fresh.genres == shipped.genres
        outputs = [
            ort.InferenceSession(str(c.onnx_path)).run(None, {"logmel": batch})
            for c in (fresh, shipped)
        ]
        for got, want in zip(*outputs, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert "Jordi Pons" in (tmp_path / "LICENSE-musicnn.txt").read_text()
    assert json.loads(cards[0].read_text())["parity"]["onnx_vs_torch_max_abs"] < 1e-4


def test_import_refuses_bad_sources(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'MSD_musicnn_big'"):
        import_models(tmp_path, tmp_path / "out", names=["MSD_musicnn_big"])
    (tmp_path / "fake.whl").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a wheel"):
        import_models(tmp_path / "fake.whl", tmp_path / "out")
    with pytest.raises(ModelError, match="neither the musicnn 0.1.0 wheel"):
        import_models(tmp_path, tmp_path / "out")
