"""`streamclf evaluate MODEL FOLDER` on a folder the model never fitted on: every file is scored,
files of a class the model lacks are reported, and each option works or is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from e2e_helpers import REPO, assert_one_line_error, run_cli

CLIPS = REPO / "datasets" / "genres" / "clips"
# The head is trained on these and never sees HELD_OUT; "polka" is a class no model has.
TRAIN = {"classical": ["wesnoth-battle", "wesnoth-breaking_the_chains", "wesnoth-knolls",
                       "wesnoth-loyalists"],
         "metal": ["fof-armygeddon", "fof-chaos_god", "fof-feelings", "fof-metal_madness"]}
HELD_OUT = {"classical": ["wesnoth-northerners", "warmux-divertissement"],
            "metal": ["fof-mutilated_mime", "fof-war_of_freedom"],
            "polka": ["hedgewars-rock"]}
SCORED = 4


def class_folders(root: Path, layout: dict[str, list[str]]) -> Path:
    """FOLDER/<class>/<clip>.ogg copied from the shipped set."""
    for label, names in layout.items():
        (root / label).mkdir(parents=True)
        for name in names:
            family = next(CLIPS.glob(f"*/{name}.ogg")).parent.name
            shutil.copy(CLIPS / family / f"{name}.ogg", root / label / f"{name}.ogg")
    return root


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    return class_folders(tmp_path_factory.mktemp("held-out"), HELD_OUT)


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Path:
    """A small head trained on TRAIN only (a few seconds of fitting)."""
    root = tmp_path_factory.mktemp("head")
    out = root / "head.onnx"
    proc = run_cli("train", str(class_folders(root / "train", TRAIN)), "--out", str(out),
                   "--head", "linear", "--epochs", "5", "--augment", "0", "--val-share", "0.25",
                   "--test-share", "0.25", "--cache-dir", str(root / "cache"), timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    return out


class TestStockModels:
    """The fused default and a single tagger on class folders and on a manifest."""

    def test_fused_scores_every_file_and_reports_the_rest(self, held_out, tmp_path):
        plot = tmp_path / "cm.png"
        proc = run_cli("evaluate", str(held_out), "--max-windows", "1", "--json",
                       "--plot", str(plot), "--engine", "onnxruntime", timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        doc = json.loads(proc.stdout)
        assert (doc["split"], doc["clips"], doc["unscored_files"]) == ("all", SCORED, {"polka": 1})
        assert all(s["windows"] == SCORED for s in doc["scores"])
        assert plot.read_bytes()[:4] == b"\x89PNG"

    def test_manifest_without_splits_is_scored_whole(self, held_out, tmp_path):
        rows = ["path,label"] + [f"{p.relative_to(held_out)},{p.parent.name}"
                                 for p in sorted(held_out.rglob("*.ogg"))]
        folder = tmp_path / "with-manifest"
        shutil.copytree(held_out, folder)
        (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
        proc = run_cli("evaluate", "MSD_musicnn", str(folder), "--max-windows", "1", timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        first = proc.stdout.decode().splitlines()[0]
        # MSD_musicnn has no tag for classical music: its zero-shot scores cannot name it
        assert first.startswith("2 files, split 'all'"), first
        assert first.endswith("cannot name: classical 2, polka 1"), first

    @pytest.mark.parametrize(("args", "says"), [
        (["--engine", "tensorrt"], "--engine tensorrt"),
        (["--cache-dir", "x"], "--cache-dir is for trained heads"),
        (["--out-dir", "x"], "--out-dir is for trained heads"),
        (["MSD_musicnn", "--threshold", "0.3"], "--threshold"),
        (["--max-windows", "0"], "--max-windows must be at least 1"),
        (["--threshold", "1.5"], "--threshold must be between 0 and 1"),
        (["--split", "val"], "no files in split 'val'"),
    ])
    def test_options_it_cannot_honour_are_refused(self, held_out, args, says):
        model = [args.pop(0)] if args[0] == "MSD_musicnn" else []
        proc = run_cli("evaluate", *model, str(held_out), *args)
        assert says in assert_one_line_error(proc, 2)


class TestTrainedHead:
    """A trained head: every file of a folder it never saw; its own test split on its own."""

    def test_held_out_folder_scored_whole_with_every_option(self, head, held_out, tmp_path):
        plot = tmp_path / "head.png"
        proc = run_cli("evaluate", str(head), str(held_out), "--json", "--max-windows", "2",
                       "--threshold", "0.99", "--plot", str(plot), "--engine", "onnxruntime",
                       "--cache-dir", str(head.parent / "cache"), timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        doc = json.loads(proc.stdout)
        assert (doc["split"], doc["files"], doc["seen_in_training"]) == ("all", SCORED, 0)
        assert doc["unscored_files"] == {"polka": 1}
        windows = doc["scores"][0]
        assert windows["windows"] == 2 * SCORED and windows["threshold"] == 0.99
        assert windows["unknown_share"] > 0  # a two-class softmax is rarely 0.99 sure
        assert plot.read_bytes()[:4] == b"\x89PNG"

    def test_its_training_folder_gives_the_held_out_split(self, head):
        proc = run_cli("evaluate", str(head), str(head.parent / "train"), "--json",
                       "--cache-dir", str(head.parent / "cache"), timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        doc = json.loads(proc.stdout)
        assert doc["split"] == "test"
