"""The torch comparison engine runs the PyTorch port with the ONNX file's own weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from backends_helpers import FP32_TOLERANCE, card, music_windows

from streamclf.backends import load_engine
from streamclf.errors import ModelError

pytest.importorskip("torch", reason="torch engine needs the train extra")
pytestmark = pytest.mark.torch


@pytest.mark.parametrize("name", ["MSD_musicnn", "MTT_vgg"])
def test_agrees_with_onnxruntime(name: str) -> None:
    """Every output within 1e-4 of the ONNX Runtime reference, at batch 1 and 8."""
    model = card(name)
    windows = music_windows(8)
    torch_engine = load_engine(model, "torch")
    ort_engine = load_engine(model, "onnxruntime")
    assert (torch_engine.name, torch_engine.precision) == ("torch", "fp32")
    assert torch_engine.info.embedding_dim == model.embedding_dim
    for batch in (windows[:1], windows):
        got, want = torch_engine.infer(batch), ort_engine.infer(batch)
        for output in ("tags", "embedding"):
            np.testing.assert_allclose(got[output], want[output], atol=FP32_TOLERANCE)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    """VGG weights under a musicnn name do not half-load: a ModelError names the file."""
    impostor = tmp_path / "MSD_musicnn.onnx"
    shutil.copy(card("MSD_vgg").onnx_path, impostor)
    with pytest.raises(ModelError, match=str(impostor)):
        load_engine(impostor, "torch")


def test_unknown_model_name(tmp_path: Path) -> None:
    other = tmp_path / "my_model.onnx"
    shutil.copy(card().onnx_path, other)
    with pytest.raises(ModelError, match="torch engine knows"):
        load_engine(other, "torch")
