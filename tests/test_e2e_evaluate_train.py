"""`streamclf evaluate` and `streamclf train` as users run them, on the shipped real-music set."""

from __future__ import annotations

import json

from e2e_helpers import GENRES, assert_one_line_error, genre_sample, run_cli


def test_evaluate_fused_default_json(tmp_path):
    plot = tmp_path / "cm.png"
    proc = run_cli("evaluate", str(GENRES), "--max-windows", "2", "--json", "--plot", str(plot),
                   timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["split"] == "test" and doc["clips"] >= 10
    names = [s["model"] for s in doc["scores"]]
    assert any("MTT" in n for n in names) and any("MSD" in n for n in names)
    assert any("fused" in n for n in names)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_train_then_evaluate_the_head(tmp_path):
    """A small head trains, exports one ONNX, and evaluates on held-out files via the CLI."""
    out, genres = tmp_path / "head.onnx", genre_sample(tmp_path / "genres")
    proc = run_cli("train", str(genres), "--out", str(out), "--head", "linear", "--epochs", "15",
                   "--augment", "0", "--cache-dir", str(tmp_path / "cache"), timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.is_file() and out.with_suffix(".json").is_file()
    proc = run_cli("evaluate", str(out), str(genres), "--json",
                   "--cache-dir", str(tmp_path / "cache"), timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["split"] == "test"
    assert "scores" in doc


def test_evaluate_missing_dataset(tmp_path):
    assert_one_line_error(run_cli("evaluate", str(tmp_path / "nothing")), 2)
