"""The genre set, the taxonomy, the evaluation metrics, and the fused default model on real
music."""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamclf.evaluate import (
    UNKNOWN,
    Score,
    accuracy,
    clip_windows,
    confusion_matrix,
    decide,
    load_manifest,
    macro_f1,
    per_class_prf,
    render_confusion,
    run_outputs,
    score_outputs,
    unknown_share,
)
from streamclf.models.card import ENGINES_DIR, MSD_LABELS, MTT_LABELS, load_model_card
from streamclf.models.taxonomy import (
    FAMILIES,
    MSD_FAMILY_TAGS,
    MTT_FAMILY_TAGS,
    calibrated_probs,
    family_scores,
    vocabulary_matrix,
    zero_shot_family,
)

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT / "datasets" / "genres"
DOC = ROOT / "docs" / "model-quality.md"
WINDOWS_PER_CLIP = 5  # of 10; keeps the real-model test near 10 s on 2 cores


def _make_genre_set():
    spec = importlib.util.spec_from_file_location("make_genre_set",
                                                  ROOT / "tools" / "make_genre_set.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class TestMetrics:
    """Metrics on hand-made cases whose answers are known."""

    def test_perfect_prediction(self):
        truth = np.array([0, 1, 2, 2])
        cm = confusion_matrix(truth=truth, pred=truth, n_classes=3)
        assert accuracy(cm) == 1.0 and macro_f1(cm) == 1.0 and unknown_share(cm) == 0.0

    def test_hand_computed_case(self):
        # truth 0,0,0,1,1,2 ; pred 0,0,1,1,unknown,0
        cm = confusion_matrix(truth=np.array([0, 0, 0, 1, 1, 2]),
                              pred=np.array([0, 0, 1, 1, UNKNOWN, 0]), n_classes=3)
        assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]]
        precision, recall, f1 = per_class_prf(cm)
        np.testing.assert_allclose(precision, [2 / 3, 1 / 2, 0])
        np.testing.assert_allclose(recall, [2 / 3, 1 / 2, 0])
        np.testing.assert_allclose(f1, [2 / 3, 1 / 2, 0])
        assert accuracy(cm) == pytest.approx(3 / 6)
        assert unknown_share(cm) == pytest.approx(1 / 6)
        assert macro_f1(cm) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)

    def test_macro_f1_ignores_classes_absent_from_truth(self):
        cm = confusion_matrix(truth=np.array([0, 0]), pred=np.array([0, 1]), n_classes=4)
        assert macro_f1(cm) == pytest.approx(2 * 1 * 0.5 / 1.5)

    def test_unknown_lowers_recall_not_precision(self):
        cm = confusion_matrix(truth=np.array([0, 0]), pred=np.array([0, UNKNOWN]), n_classes=2)
        precision, recall, _ = per_class_prf(cm)
        assert precision[0] == 1.0 and recall[0] == 0.5

    def test_decide_marks_low_confidence_unknown(self):
        probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]], np.float32)
        assert decide(probs, threshold=0.55).tolist() == [0, 1, UNKNOWN]
        assert decide(probs, threshold=0.0).tolist() == [0, 1, 0]

    def test_confusion_table_shows_only_occurring_classes(self):
        cm = confusion_matrix(truth=np.array([0, 2]), pred=np.array([2, UNKNOWN]), n_classes=4)
        text = render_confusion(cm, ["a", "b", "c", "d"])
        assert "| a | 0 | 1 | 0 |" in text and "| c | 0 | 0 | 1 |" in text and "b" not in text

    def test_score_reports_its_numbers(self):
        cm = confusion_matrix(truth=np.array([0, 1]), pred=np.array([0, 0]), n_classes=2)
        doc = Score("m", cm).to_dict(["x", "y"])
        assert doc["accuracy"] == 0.5 and doc["windows"] == 2


class TestTaxonomy:
    """Every family tag exists, every genre tag of both cards is mapped or knowingly left out."""

    def test_mapped_tags_exist_in_their_vocabulary(self):
        for dataset in ("MTT", "MSD"):
            matrix = vocabulary_matrix(dataset)
            assert matrix.shape == (len(FAMILIES), 50) and matrix.max() == 1.0
            assert (matrix.sum(axis=0) <= 1).all(), "a tag maps to one family at most"

    def test_every_genre_tag_of_the_cards_is_mapped_or_documented(self):
        mapped = {t for tags in (*MTT_FAMILY_TAGS.values(), *MSD_FAMILY_TAGS.values())
                  for t in tags}
        left_out = {"indian", "experimental", "easy listening"}  # styles outside the taxonomy
        for name in ("MTT_musicnn", "MSD_musicnn"):
            for genre in load_model_card(name).genres:
                assert genre in mapped or genre in left_out, genre

    def test_every_family_is_reachable_and_documented(self):
        text = DOC.read_text()
        for family in FAMILIES:
            assert family in MTT_FAMILY_TAGS or family in MSD_FAMILY_TAGS
            assert f"| {family} |" in text, f"docs/model-quality.md lacks the row for {family}"

    def test_zero_shot_takes_the_best_tag_and_skips_families_without_tags(self):
        mapping = vocabulary_matrix("MTT")
        tags = np.zeros((1, 50), np.float32)
        tags[0, MTT_LABELS.index("opera")] = 0.9
        tags[0, MTT_LABELS.index("classical")] = 0.3
        scores = family_scores(tags=tags, mapping=mapping)
        assert scores[0, FAMILIES.index("classical")] == pytest.approx(0.9)
        assert FAMILIES[zero_shot_family(scores, mapping=mapping)[0]] == "classical"
        silent = zero_shot_family(np.zeros_like(scores), mapping=mapping)[0]
        assert FAMILIES[silent] in MTT_FAMILY_TAGS
        assert "jazz" not in MTT_FAMILY_TAGS and "classical" not in MSD_FAMILY_TAGS
        assert "jazz" in MSD_LABELS

    def test_calibrated_probs_is_a_distribution(self, rng):
        scores = rng.random((4, len(FAMILIES)))
        ones = np.ones(len(FAMILIES), np.float32)
        probs = calibrated_probs(mtt_scores=scores, msd_scores=scores, weight_mtt=ones,
                                 weight_msd=ones, bias=0 * ones)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        assert (probs.argmax(1) == scores.argmax(1)).all()


@pytest.fixture(scope="module")
def rows():
    with open(DATASET / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


class TestGenreSet:
    """The shipped set: complete rows, real 16 kHz mono clips, evidence, nothing reserved."""

    def test_every_row_is_complete_and_its_clip_decodes_at_16k_mono(self, rows):
        tool = _make_genre_set()
        assert len(rows) >= 30 and tuple(rows[0]) == tool.MANIFEST_FIELDS
        for row in rows:
            assert all(row[field].strip() for field in tool.MANIFEST_FIELDS), row["id"]
            assert row["label"] in FAMILIES and row["split"] in ("calib", "test")
            assert row["label_source"] in tool.LABEL_SOURCES
            assert (DATASET / "copyright" / f"{row['package']}.txt").is_file()
            audio, rate = sf.read(DATASET / row["path"], dtype="float32")
            assert rate == 16000 and audio.ndim == 1, row["path"]
            assert 20 * rate <= len(audio) <= 30.1 * rate, row["path"]
            assert np.sqrt(np.mean(audio**2)) > 1e-3, f"{row['path']} is silent"

    def test_no_reserved_package_anywhere(self, rows):
        tool = _make_genre_set()
        assert len(tool.load_reserved()) == 15
        used = {row["package"] for row in rows} | set(tool.load_packages())
        used |= {p.stem for p in (DATASET / "copyright").iterdir()}
        assert not tool.reserved_among(used)

    def test_manifest_is_what_the_build_tool_writes_from_tracks_csv(self, rows):
        tool = _make_genre_set()
        tracks, packages = tool.load_tracks(), tool.load_packages()
        tool.check(tracks, packages)
        assert [r["id"] for r in rows] == [t.id for t in tracks]
        for row, track in zip(rows, tracks, strict=True):
            package = packages[track.package]
            assert (row["label"], row["split"], row["artist"], row["package"]) == (
                track.label, track.split, track.artist, track.package)
            assert (row["version"], row["license"]) == (package.version, package.license)
            assert row["path"] == f"clips/{track.label}/{track.id}.ogg"
            assert row["source_file"] == " + ".join(track.files)
        assert {p.stem for p in (DATASET / "copyright").iterdir()} == {r["package"] for r in rows}

    def test_an_mma_groove_is_played_over_mma_own_preview_chart(self):
        tool = _make_genre_set()
        song = tool.groove_chart(Path("/x/lib/stdlib/blues.mma"), "Blues", bars=6)
        assert song.splitlines() == ["RndSeed 1", "Use /x/lib/stdlib/blues.mma", "Groove Blues",
                                     "I", "vi", "ii", "V7", "I", "vi"]

    def test_every_clip_names_how_it_became_sound(self, rows):
        tool = _make_genre_set()
        for row in rows:
            how, source = row["rendered_with"], row["source_file"]
            if tool.GROOVE_SEPARATOR in source:
                assert how.startswith(f"mma {row['version']} (groove over I, vi, ii, V7"), row["id"]
            if source.endswith(".mid") or tool.GROOVE_SEPARATOR in source:
                midi = r"fluidsynth \S+ \+ fluid-soundfont-gm \S+ \(FluidR3_GM\.sf2, 44\.1 kHz\)"
                groove = r"mma \S+ \(groove over .*, 32 bars\) \+ "
                assert re.fullmatch(rf"({groove})?{midi}", how), row["id"]
            elif source.endswith(tool.SCORE_SUFFIXES):
                assert how.startswith("musescore3 ") and "mscore3 -o" in how, row["id"]
            elif source.endswith(tool.LMMS_SUFFIXES):
                assert how.startswith("lmms ") and "lmms render" in how, row["id"]
            else:
                assert how == tool.RECORDED, row["id"]

    def test_one_spelling_per_artist(self, rows):
        spellings = defaultdict(set)
        for row in rows:
            spellings[" ".join(row["artist"].casefold().split())].add(row["artist"])
        assert all(len(names) == 1 for names in spellings.values()), spellings

    def test_both_splits_hold_every_family(self, rows):
        labels = {row["label"] for row in rows}
        assert len(labels) >= 6
        for label in labels:
            assert {r["split"] for r in rows if r["label"] == label} == {"calib", "test"}


class TestFusedModel:
    """The fused graph equals its parts and beats each of them on the held-out part."""

    @pytest.fixture(scope="class")
    def test_windows(self):
        clips = [c for c in load_manifest(DATASET) if c.split == "test"]
        return clips, clip_windows(clips, max_windows=WINDOWS_PER_CLIP)

    @pytest.fixture(scope="class")
    def fused_outputs(self, test_windows):
        _, (frames, _, _) = test_windows
        return run_outputs(ENGINES_DIR / "fused_musicnn.onnx", frames)

    def test_card_loads_with_families_as_labels(self):
        card = load_model_card("fused_musicnn")
        assert card.labels == FAMILIES and card.families == FAMILIES
        assert set(card.genres) < set(FAMILIES)  # it publishes only its validated families
        assert card.embedding_dim == 400
        assert card.onnx_path.stat().st_size < 10 * 2**20

    def test_side_outputs_equal_the_single_models(self, test_windows, fused_outputs):
        _, (frames, _, _) = test_windows
        fused = {k: v[::4] for k, v in fused_outputs.items()}
        frames = frames[::4]
        for name, key in (("MTT_musicnn", "mtt_tags"), ("MSD_musicnn", "msd_tags")):
            single = run_outputs(ENGINES_DIR / f"{name}.onnx", frames)
            np.testing.assert_allclose(fused[key], single["tags"], atol=1e-5)
            assert fused["embedding"].shape == (len(frames), 400)
        np.testing.assert_allclose(fused["tags"].sum(axis=1), 1.0, rtol=1e-5)

    def test_family_output_matches_the_numpy_calibration(self, fused_outputs):
        fused = fused_outputs
        calibration = load_model_card("fused_musicnn").document["calibration"]
        params = {k: np.asarray(calibration[k], np.float32)
                  for k in ("weight_mtt", "weight_msd", "bias")}
        want = calibrated_probs(
            mtt_scores=family_scores(tags=fused["mtt_tags"], mapping=vocabulary_matrix("MTT")),
            msd_scores=family_scores(tags=fused["msd_tags"], mapping=vocabulary_matrix("MSD")),
            **params)
        residual = calibration.get("residual")
        if residual:  # a head on the embeddings (MTT's 200 then MSD's): its logits add to these
            assert residual["input"] == "embedding"
            x = (fused["embedding"] - np.asarray(residual["mean"])) / np.asarray(residual["scale"])
            z = np.log(want) + x @ np.asarray(residual["weight"]).T
            want = np.exp(z - z.max(axis=1, keepdims=True))
            want /= want.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(fused["tags"], want, atol=1e-4)

    def test_fused_beats_each_single_model_on_held_out_clips(self, test_windows, fused_outputs):
        _, (_, truth, _) = test_windows
        scores = score_outputs(load_model_card("fused_musicnn"), fused_outputs, truth,
                               threshold=0.0)
        by_name = {s.name: s for s in scores}
        fused = by_name["fused_musicnn"]
        for single in ("MTT_musicnn zero-shot", "MSD_musicnn zero-shot"):
            assert fused.accuracy > by_name[single].accuracy, single
            assert fused.macro_f1 > by_name[single].macro_f1, single
