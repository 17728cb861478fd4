"""The split graphs compose to the shipped model; the runner factory falls back, and says why."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from incremental_helpers import TOLERANCE, windows_at
from structlog.testing import capture_logs

from streamclf.backends.incremental import (
    SPLIT_DIR,
    IncrementalRunner,
    frame_patches,
    load_split_card,
)
from streamclf.backends.onnx import open_session
from streamclf.backends.runner import FullWindowRunner, load_runner
from streamclf.errors import ModelError
from streamclf.features.framer import logmel_windows_for_file
from streamclf.models.card import load_model_card

CLIP = __file__.rsplit("/tests/", 1)[0] + "/streamclf/data/clip.ogg"


@pytest.fixture(scope="module")
def clip_windows() -> np.ndarray:
    return np.stack([w.frames for w in logmel_windows_for_file(CLIP, hop_frames=300)])


def sessions(name: str):
    split = load_split_card(load_model_card(name))
    full = open_session(load_model_card(name).onnx_path, threads=1)
    return (full, open_session(split.frame_path, threads=1),
            open_session(split.window_path, threads=1))


@pytest.mark.parametrize("name", ["MSD_musicnn", "fused_musicnn"])  # MTT: the export test
class TestComposition:
    """frame graph → window graph equals the full model on real music."""

    def test_equals_full_model(self, name, clip_windows):
        full, frame, window = sessions(name)
        want = full.run(["tags", "embedding"], {"logmel": clip_windows})
        (core,) = frame.run(None, {"context": clip_windows})  # [B, 181, 408]: frames 3 … 183
        got = window.run(["tags", "embedding"], {"logmel": clip_windows, "core": core})
        for output, g, w in zip(("tags", "embedding"), got, want, strict=True):
            assert float(np.abs(g - w).max()) <= TOLERANCE[output]
        # the window graph really takes its timbral features from `core`
        bumped = window.run(["tags"], {"logmel": clip_windows, "core": core + 0.5})[0]
        assert float(np.abs(bumped - want[0]).max()) > 1e-3

    def test_frame_features_do_not_depend_on_the_window(self, name, clip_windows):
        """A frame's features from 7-frame patches equal those from a whole sequence."""
        _, frame, _ = sessions(name)
        sequence = clip_windows[:1]
        (whole,) = frame.run(None, {"context": sequence})
        patches = np.empty((181, 7, 96), np.float32)
        assert frame_patches(rows=sequence[0], context=3, out=patches) == 181
        assert whole.shape == (1, 181, 408 * (2 if name.startswith("fused") else 1))
        (single,) = frame.run(None, {"context": patches})
        assert float(np.abs(single[:, 0] - whole[0]).max()) <= TOLERANCE["embedding"]


class TestSplitCard:
    """A split is used only with the exact model it was cut from."""

    def test_loads(self):
        split = load_split_card(load_model_card("MSD_musicnn"))
        assert (split.context_frames, split.core_frames, split.timbral_dim) == (3, 181, 408)

    @pytest.mark.parametrize("field", ["full_sha256", "window"])
    def test_mismatch_is_refused(self, tmp_path, field):
        for f in SPLIT_DIR.glob("MSD_musicnn.*"):
            shutil.copy(f, tmp_path)
        card_path = tmp_path / "MSD_musicnn.json"
        doc = json.loads(card_path.read_text())
        if field == "window":
            doc["window"]["sha256"] = "0" * 64
        else:
            doc[field] = "0" * 64
        card_path.write_text(json.dumps(doc))
        with pytest.raises(ModelError, match="sha256"):
            load_split_card(load_model_card("MSD_musicnn"), split_dir=tmp_path)


class TestLoadRunner:
    """Incremental where it can run; otherwise full windows, logged with the reason."""

    def test_musicnn_on_onnxruntime_is_incremental(self):
        with capture_logs() as logs:
            runner = load_runner("MSD_musicnn", "onnxruntime", max_batch=4)
        assert isinstance(runner, IncrementalRunner)
        assert any(e["event"] == "runner_selected" and e["mode"] == "incremental" for e in logs)

    def test_auto_without_gpu_is_incremental(self):
        assert isinstance(load_runner("MTT_musicnn", "auto", max_batch=2), IncrementalRunner)

    @pytest.mark.parametrize(("model", "kwargs", "why"), [
        ("MSD_vgg", {}, "VGG"),
        ("MSD_musicnn", {"incremental": False}, "disabled"),
        ("MSD_musicnn", {"split_dir": "EMPTY"}, "no usable split"),
        ("MSD_musicnn", {"hop_frames": 187}, "share no reusable frame"),
    ])
    def test_falls_back_to_full_windows(self, tmp_path, clip_windows, model, kwargs, why):
        if kwargs.get("split_dir") == "EMPTY":
            kwargs = {"split_dir": tmp_path}
        with capture_logs() as logs:
            runner = load_runner(model, "onnxruntime", max_batch=4, **kwargs)
        assert isinstance(runner, FullWindowRunner)
        chosen = [e for e in logs if e["event"] == "runner_selected"]
        assert chosen[0]["mode"] == "full" and why in chosen[0]["reason"]
        logmel = np.concatenate(list(clip_windows[:3]))
        windows = windows_at(logmel, hop=100, count=3)
        out = runner.run([("s", w) for w in windows])
        want = runner.engine.infer(np.stack([w.frames for w in windows]))
        assert out["tags"].shape == (3, 50)
        np.testing.assert_array_equal(out["tags"], want["tags"])


@pytest.mark.torch
def test_split_export_reproduces_the_model(tmp_path):
    """Cutting a shipped model again gives graphs that compose to it (checked inside
    split_models)."""
    pytest.importorskip("torch")
    from streamclf.train.split import split_models

    (card_path,) = split_models(["MTT_musicnn"], out_dir=tmp_path)
    doc = json.loads(card_path.read_text())
    assert all(doc["split_vs_full_max_abs"][k] <= TOLERANCE[k] for k in TOLERANCE)
    load_split_card(load_model_card("MTT_musicnn"), split_dir=tmp_path)


def test_bench_reports_both_runners_on_the_same_ticks():
    """The bench's bookkeeping (timing is for `streamclf bench`, not asserted here)."""
    from streamclf.bench.incremental import bench_incremental, format_incremental

    result = bench_incremental(hops_s=(0.5, 1.0), streams=1, quick=True, threads=1)
    assert [r["hop_frames"] for r in result["hops"]] == [31, 62]
    for row in result["hops"]:
        assert row["frames_computed_per_window"] == row["hop_frames"]
        assert row["full_ms_per_window"] > 0 and row["incremental_ms_per_window"] > 0
        # CPU of the process's threads, on the same ticks: one thread here, so about the wall
        assert 0 < row["incremental_cpu_ms_per_window"] < 3 * row["incremental_ms_per_window"]
        assert 1.5 < row["ideal_speedup"] < 3.5
    assert "| 0.5 s (31 frames) |" in format_incremental(result)
