"""Model cards: the packaged engines resolve by name, verify their ONNX file, and carry labels,
genres, licence and provenance that agree with the original musicnn package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from models_helpers import MODEL_NAMES, tf_reference

from streamclf.errors import ModelError
from streamclf.models.card import (
    DEFAULT_MODEL,
    ENGINES_DIR,
    LICENSE_FILE,
    ModelCard,
    load_model_card,
    resolve_card_path,
)

ONNX_MAX_BYTES = 5 * 1024 * 1024


@pytest.fixture
def copied_engine(tmp_path):
    """MTT_vgg's card and ONNX file in a scratch folder, free to corrupt."""
    for suffix in (".json", ".onnx"):
        shutil.copy(ENGINES_DIR / f"MTT_vgg{suffix}", tmp_path)
    return tmp_path


class TestPackagedCards:
    """Every shipped model loads by bare name and describes itself fully."""

    @pytest.mark.parametrize("name", MODEL_NAMES)
    def test_card_matches_the_original_package(self, name):
        card = load_model_card(name)
        assert isinstance(card, ModelCard)
        assert card.name == name and card.onnx_path.is_file()
        assert card.onnx_path.stat().st_size < ONNX_MAX_BYTES
        # Labels typed from musicnn/configuration.py; the TF fixture recorded the real list.
        assert list(card.labels) == list(tf_reference(name)["labels"])
        assert set(card.genres) <= set(card.labels) and len(card.genres) >= 10
        assert (card.window_frames, card.n_mels, card.sample_rate_hz) == (187, 96, 16000)
        assert card.embedding_dim == (200 if "musicnn" in name else 256)
        doc = card.document
        assert doc["training_data"]["tags"] == 50
        assert doc["source"]["version"] == "0.1.0" and len(doc["source"]["wheel_sha256"]) == 64
        assert "Jordi Pons" in doc["license"]["text"]
        assert doc["input"]["compression"] == "log10(10000 * x + 1)"
        assert doc["parity"]["onnx_vs_tensorflow"]["tags_max_abs"] < 1e-4

    def test_default_model_and_licence_ship(self):
        assert load_model_card().name == DEFAULT_MODEL == "fused_musicnn"
        assert (
            "ISC"
            in json.loads((ENGINES_DIR / f"{DEFAULT_MODEL}.json").read_text())["license"]["name"]
        )
        assert "Permission to use" in (ENGINES_DIR / LICENSE_FILE).read_text()

    def test_the_default_carries_its_unknown_threshold(self):
        """The daemon's default threshold comes from here (docs/config.md); stock taggers have
        none and get the config's fallback."""
        default = load_model_card()
        assert default.unknown_threshold == default.document["calibration"]["unknown_threshold"]
        assert 0.0 <= default.unknown_threshold <= 1.0
        assert load_model_card("MSD_musicnn").unknown_threshold is None

    def test_the_default_publishes_only_its_validated_genres(self):
        """It decides among all 14 families but publishes those its cross-validation on unseen
        packages validated, each with its own threshold (docs/model-selection.md)."""
        default = load_model_card()
        validated = default.document["validation"]["validated_families"]
        assert default.families == default.labels and len(default.labels) == 14
        assert list(default.genres) == validated and set(validated) < set(default.labels)
        assert set(default.genre_thresholds) == set(validated)
        msd = load_model_card("MSD_musicnn")
        assert msd.families == msd.genres and msd.genre_thresholds == {}

    def test_genre_vocabularies(self):
        msd, mtt = load_model_card("MSD_musicnn"), load_model_card("MTT_musicnn")
        assert {"rock", "pop", "jazz", "metal", "Hip-Hop", "blues", "country"} <= set(msd.genres)
        assert "classical" not in msd.labels  # MSD's tags have no classical: documented gap
        assert {"classical", "techno", "rock", "pop", "electronic"} <= set(mtt.genres)
        assert not {"guitar", "female", "fast", "80s", "sad"} & (set(msd.genres) | set(mtt.genres))
        assert msd.genre_indices(["pop", "rock"]) == [1, 0]
        with pytest.raises(ModelError, match="no tag 'polka'"):
            msd.genre_indices(["polka"])

    def test_daemon_side_imports_no_torch(self):
        code = (
            "import sys, streamclf.models.card as c; c.load_model_card(); "
            "sys.exit('torch' in sys.modules)"
        )
        assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


class TestResolution:
    """A bare name means the packaged engines folder; a path means that file."""

    def test_forms(self, copied_engine):
        assert resolve_card_path("MTT_vgg") == ENGINES_DIR / "MTT_vgg.json"
        assert resolve_card_path(copied_engine / "MTT_vgg.onnx") == copied_engine / "MTT_vgg.json"
        assert (
            load_model_card(copied_engine / "MTT_vgg.json").onnx_path
            == copied_engine / "MTT_vgg.onnx"
        )
        assert load_model_card(str(copied_engine / "MTT_vgg.onnx")).name == "MTT_vgg"

    def test_unknown_name_lists_the_packaged_models(self):
        with pytest.raises(ModelError, match="packaged models: .*MSD_musicnn"):
            load_model_card("MSD_musicnn_big")


class TestVerification:
    """A card whose model file is missing, altered or malformed is refused at load."""

    def test_corrupt_onnx_is_refused(self, copied_engine):
        onnx_path = copied_engine / "MTT_vgg.onnx"
        data = bytearray(onnx_path.read_bytes())
        data[len(data) // 2] ^= 1
        onnx_path.write_bytes(bytes(data))
        with pytest.raises(ModelError, match="does not match its card"):
            load_model_card(onnx_path)

    def test_missing_onnx(self, copied_engine):
        (copied_engine / "MTT_vgg.onnx").unlink()
        with pytest.raises(ModelError, match="cannot read model"):
            load_model_card(copied_engine / "MTT_vgg.json")

    @pytest.mark.parametrize("breakage", ["not json", "no labels", "label count"])
    def test_malformed_card(self, copied_engine, breakage):
        path = copied_engine / "MTT_vgg.json"
        doc = json.loads(path.read_text())
        if breakage == "not json":
            path.write_text("{")
        else:
            if breakage == "no labels":
                del doc["labels"]
            else:
                doc["labels"] = doc["labels"][:-1]
            path.write_text(json.dumps(doc))
        with pytest.raises(ModelError, match="model card"):
            load_model_card(path)

    @pytest.mark.parametrize("threshold", [1.5, "0.3", True])
    @pytest.mark.parametrize("key", ["unknown_threshold", "genre_thresholds.rock"])
    def test_bad_unknown_threshold_is_one_line(self, copied_engine, threshold, key):
        path = copied_engine / "MTT_vgg.json"
        doc = json.loads(path.read_text())
        doc["calibration"] = ({"unknown_threshold": threshold} if key == "unknown_threshold"
                              else {"genre_thresholds": {"rock": threshold}})
        path.write_text(json.dumps(doc))
        with pytest.raises(ModelError, match=rf"calibration\.{key} must be a number "
                                             r"0\.\.1") as info:
            load_model_card(path)
        assert "\n" not in str(info.value)


def test_fixture_taggrams_are_sane():
    """Guards the references themselves: a rock clip, tagged rock by every model, all patches."""
    for name in MODEL_NAMES:
        ref = tf_reference(name)
        assert ref["taggram"].shape == (10, 50)
        assert list(ref["labels"])[int(np.argmax(ref["taggram"].mean(axis=0)))] == "rock"
