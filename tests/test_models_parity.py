"""The shipped ONNX models compute what the original TensorFlow musicnn computes.

References come from tools/make_references.py (musicnn 0.1.0 under TensorFlow 2.15, NumPy 1.26)
on the bundled clip; no TensorFlow or torch is needed here, only ONNX Runtime.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from models_helpers import (
    CLIP,
    EMBEDDING_TOLERANCE,
    MODEL_NAMES,
    TAG_TOLERANCE,
    tf_logmel,
    tf_reference,
)

from streamclf.models.card import INPUT_NAME, OUTPUT_NAMES, load_model_card

# Our float32 log-mel and musicnn's differ only where a power lands on the other side of a
# float16 rounding step: one step is at most ~4.3e-4 in log10(10000 x + 1).
FLOAT16_STEP_LOG = 1e-3
# A couple of float32 ulps at the largest log-mel values (~6): summation-order noise.
FLOAT32_NOISE = 1e-6


@functools.cache
def session(name: str):
    """One ONNX Runtime session per model for the whole module (they take ~1 s to build)."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(load_model_card(name).onnx_path), providers=["CPUExecutionProvider"]
    )


def run(name: str, logmel: np.ndarray) -> dict[str, np.ndarray]:
    return dict(
        zip(OUTPUT_NAMES, session(name).run(list(OUTPUT_NAMES), {INPUT_NAME: logmel}), strict=True)
    )


@pytest.fixture(scope="module")
def framer_windows() -> np.ndarray:
    """streamclf's own log-mel windows of the clip, musicnn's non-overlapping 3 s patches."""
    from streamclf.features.framer import logmel_windows_for_file

    return np.stack([w.frames for w in logmel_windows_for_file(CLIP)])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_reproduces_the_tensorflow_taggram(name):
    """Fed musicnn's own log-mel batch, every tag and embedding value is within 1e-4."""
    batch = tf_logmel()
    ref = tf_reference(name)
    got = run(name, batch)
    np.testing.assert_allclose(
        got["tags"], ref["taggram"][: len(batch)], rtol=0, atol=TAG_TOLERANCE
    )
    np.testing.assert_allclose(
        got["embedding"], ref["embedding"][: len(batch)], rtol=0, atol=EMBEDDING_TOLERANCE
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_interface_and_dynamic_batch(name):
    """logmel [batch, 187, 96] in; tags [batch, 50], embedding [batch, D] out; rows independent."""
    import onnx

    card = load_model_card(name)
    model = onnx.load(str(card.onnx_path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    sess = session(name)
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type, inp.shape[1:]) == (INPUT_NAME, "tensor(float)", [187, 96])
    assert isinstance(inp.shape[0], str)
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)
    batch = tf_logmel()
    whole = run(name, batch)
    assert whole["tags"].shape == (len(batch), 50)
    assert whole["embedding"].shape == (len(batch), card.embedding_dim)
    assert ((whole["tags"] > 0) & (whole["tags"] < 1)).all()
    for i in range(len(batch)):
        single = run(name, batch[i : i + 1])
        np.testing.assert_allclose(single["tags"][0], whole["tags"][i], rtol=0, atol=1e-6)


def test_framer_reproduces_musicnns_input_batch(framer_windows):
    """streamclf's file path (soundfile → soxr HQ → framer) gives musicnn's patches.

    They may differ only by one float16 rounding step of the power, in very few cells, and
    elsewhere by float32 rounding alone. Which float32 noise depends on the machine: on one
    whose OpenBLAS picks its "Haswell" kernels (threadpoolctl), about half of the cells differ
    by an ulp or two (≤ 1e-6 at values up to ~6), where an earlier machine matched exactly.
    """
    batch = tf_logmel()
    assert framer_windows.shape == (10, 187, 96)
    diff = np.abs(framer_windows[: len(batch)] - batch)
    assert diff.max() < FLOAT16_STEP_LOG
    assert (diff > FLOAT32_NOISE).mean() < 1e-3  # only rounding-boundary cells differ more


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_streamclf_end_to_end_matches_musicnn_on_the_whole_clip(name, framer_windows):
    """Framer + ONNX reproduce the original taggram on all ten patches of the clip."""
    ref = tf_reference(name)
    got = run(name, framer_windows)
    np.testing.assert_allclose(got["tags"], ref["taggram"], rtol=0, atol=TAG_TOLERANCE)
    np.testing.assert_allclose(
        got["embedding"], ref["embedding"], rtol=0, atol=10 * EMBEDDING_TOLERANCE
    )
