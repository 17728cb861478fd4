"""`streamclf train` end to end on real music (datasets/genres: Debian game soundtracks).

One module-scoped run embeds a sample of the set (`genre_sample`: 3 clips per split of the 8
largest families, so the time stays put as the set grows) with the frozen MSD musicnn (cached in
a temporary folder), trains an MLP head on the calib split and exports musicnn + head as one ONNX
file.
The checks are about learning, not one number: held-out accuracy far above chance and above
the zero-shot baseline, the exported file equal to the torch model, and the daemon's own
commands accepting it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from e2e_helpers import genre_sample

from streamclf.backends.runner import load_engine
from streamclf.models.card import load_model_card
from streamclf.train.augment import AugmentConfig
from streamclf.train.commands import run_evaluate_head, train_model
from streamclf.train.datasets import SplitOptions, split_dataset
from streamclf.train.evaluation import evaluate_model, is_trained_head
from streamclf.train.export import load_torch_custom
from streamclf.train.trainer import TrainConfig

pytestmark = [pytest.mark.torch, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
CONFIG = TrainConfig(head="mlp", hidden=64, epochs=40, patience=8, seed=7)
SPLITS = SplitOptions(val_share=0.25, seed=7)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def genres_csv(workdir: Path) -> Path:
    return genre_sample(workdir / "genres") / "manifest.csv"


@pytest.fixture(scope="module")
def trained(workdir: Path, genres_csv: Path):
    card, report = train_model(
        genres_csv,
        out=workdir / "genres-mlp.onnx",
        config=CONFIG,
        augment=AugmentConfig(copies=1),
        splits=SPLITS,
        cache_dir=workdir / "cache",
    )
    return card, report


@pytest.fixture(scope="module")
def evaluation(trained, workdir: Path, genres_csv: Path):
    card, _ = trained
    return evaluate_model(card.onnx_path, genres_csv, split="test", cache_dir=workdir / "cache")


def test_card_is_a_model_card_with_the_classes(trained, genres_csv: Path) -> None:
    card, report = trained
    classes = tuple(sorted(split_dataset(genres_csv, SPLITS).classes))
    assert card.labels == card.genres == classes
    assert card.document["outputs"]["tags"]["shape"] == ["batch", len(classes)]
    assert card.document["base_model"]["name"] == "MSD_musicnn"
    assert card.document["parity"]["onnx_vs_torch_max_abs"] <= 1e-4
    assert report["files"]["test"] and report["files"]["val"]
    reloaded = load_model_card(card.onnx_path)  # what `model = "path/to/custom.onnx"` does
    assert reloaded.sha256 == card.sha256


def test_held_out_accuracy_far_above_chance_and_the_zero_shot_baseline(trained, evaluation) -> None:
    card, _ = trained
    chance = 1 / len(card.labels)
    scores = {s.name: s for s in evaluation.scores}
    files, windows = scores[f"{card.name} (files)"], scores[f"{card.name} (windows)"]
    baseline = scores["MSD_musicnn zero-shot (files)"]
    print({name: round(s.accuracy, 3) for name, s in scores.items()})
    assert evaluation.seen_in_training == 0
    assert windows.accuracy >= 2.5 * chance
    assert files.accuracy >= 3 * chance
    assert files.accuracy > baseline.accuracy
    assert files.macro_f1 > baseline.macro_f1


def test_evaluate_command_writes_tables_pngs_and_json(
    trained, evaluation, workdir: Path, genres_csv: Path, capsys
) -> None:
    card, _ = trained
    assert is_trained_head(card.onnx_path) and not is_trained_head("MSD_musicnn")
    args = argparse.Namespace(
        model=card.onnx_path,
        dataset=genres_csv,
        split="test",
        engine=None,
        cache_dir=workdir / "cache",
        out_dir=workdir / "report",
        threshold=None,
        max_windows=None,
        plot=None,
        json=False,
    )
    assert run_evaluate_head(args) == 0
    text = capsys.readouterr().out
    assert "| class | precision | recall | F1 | support |" in text and "zero-shot" in text
    pngs = sorted(p.name for p in (workdir / "report").glob("confusion-*.png"))
    assert len(pngs) == 4
    report = json.loads((workdir / "report" / "evaluation.json").read_text())
    assert report["files"] == evaluation.files
    assert set(report["scores"][0]["per_class"]) == set(card.labels)


def test_exported_onnx_equals_the_torch_model_on_real_windows(trained) -> None:
    card, _ = trained
    from streamclf.features.framer import logmel_windows_for_file

    frames = np.stack(
        [w.frames for w in logmel_windows_for_file(ROOT / "streamclf" / "data" / "clip.ogg")]
    )
    engine = load_engine(card, kind="onnxruntime")
    got = engine.infer(frames[: engine.max_batch])
    with torch.no_grad():
        tags, embedding = load_torch_custom(card.onnx_path)(
            torch.from_numpy(frames[: engine.max_batch])
        )
    np.testing.assert_allclose(got["tags"], tags.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["embedding"], embedding.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["tags"].sum(axis=1), 1.0, atol=1e-5)
    stock = load_engine(load_model_card("MSD_musicnn"), kind="onnxruntime").infer(frames[:4])
    np.testing.assert_allclose(got["embedding"][:4], stock["embedding"], atol=1e-4)


def test_torch_engine_runs_the_custom_model(trained) -> None:
    card, _ = trained
    engine = load_engine(card, kind="torch")
    x = np.random.default_rng(0).uniform(0, 4, (2, 187, 96)).astype(np.float32)
    want = load_engine(card, kind="onnxruntime").infer(x)
    np.testing.assert_allclose(engine.infer(x)["tags"], want["tags"], atol=1e-4)


def test_classify_command_accepts_the_custom_model(trained) -> None:
    card, _ = trained
    clip = ROOT / "datasets" / "genres" / "clips" / "metal" / "fof-feelings.ogg"
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "streamclf"),
            "classify",
            "--model",
            str(card.onnx_path),
            "--json",
            str(clip),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["files"][0]["summary"]["genre"] in card.labels


def test_cached_embeddings_make_a_second_run_reproducible(
    trained, workdir: Path, genres_csv: Path
) -> None:
    """Same seed, warm cache: the same head, bit for bit, without recomputing an embedding."""
    card, report = trained
    again, report_again = train_model(
        genres_csv,
        out=workdir / "again.onnx",
        config=CONFIG,
        augment=AugmentConfig(copies=1),
        splits=SPLITS,
        cache_dir=workdir / "cache",
    )
    assert report_again["embeddings"] == {
        "computed": 0,
        "from_cache": sum(report["embeddings"].values()),
    }
    assert again.sha256 == card.sha256  # the exported ONNX file is byte-identical
    assert report_again["best"] == report["best"]
    assert report_again["window_accuracy"] == report["window_accuracy"]


def test_attention_head_trains_and_exports(trained, workdir: Path, genres_csv: Path) -> None:
    card, _ = trained
    attention, report = train_model(
        genres_csv,
        out=workdir / "genres-attention.onnx",
        config=replace(CONFIG, head="attention", segment_windows=4),
        augment=AugmentConfig(copies=1),
        splits=SPLITS,
        cache_dir=workdir / "cache",
    )
    assert report["window_accuracy"]["test"] >= 2.5 / len(card.labels)
    assert attention.document["head"]["kind"] == "attention"
    x = np.random.default_rng(1).uniform(0, 4, (3, 187, 96)).astype(np.float32)
    with torch.no_grad():
        want = load_torch_custom(attention.onnx_path)(torch.from_numpy(x))[0].numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(attention.onnx_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["tags"], {"logmel": x})[0], want, atol=1e-4)
