"""Model cards: what a shipped model is, expects and outputs, and which of its tags are genres.

Runtime code (no torch). A card is `engines/<name>.json` beside `engines/<name>.onnx`;
`load_model_card('MSD_musicnn')` finds it in the packaged engines folder, a path finds it
anywhere. Loading checks the ONNX file's sha256 against the card, so a corrupt or swapped
model fails at load with a ModelError instead of producing quiet nonsense.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamclf.errors import ConfigError, ModelError
from streamclf.features.mel import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE_HZ, WINDOW_FRAMES

CARD_SCHEMA = 1
ENGINES_DIR = Path(__file__).resolve().parent.parent / "engines"
DEFAULT_MODEL = "fused_musicnn"  # MTT + MSD musicnn fused and calibrated: docs/model-quality.md
LICENSE_FILE = "LICENSE-musicnn.txt"
INPUT_NAME = "logmel"
OUTPUT_NAMES = ("tags", "embedding")
MUSICNN_VERSION = "0.1.0"
MUSICNN_WHEEL = f"musicnn-{MUSICNN_VERSION}-py3-none-any.whl"

# fmt: off
# musicnn/configuration.py, in output order.
MTT_LABELS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)
MSD_LABELS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill",
    "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic",
    "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock",
    "60s", "rnb", "indie pop", "sad", "House", "happy",
)
# The tags that name a genre or style (not an instrument, voice, mood, tempo or decade).
# MSD has no 'classical' tag; MTT's 'classic' is left out as an ambiguous twin of 'classical'.
MTT_GENRES = (
    "classical", "techno", "electronic", "rock", "ambient", "indian", "opera", "pop",
    "new age", "dance", "country", "metal",
)
MSD_GENRES = (
    "rock", "pop", "alternative", "indie", "electronic", "dance", "alternative rock", "jazz",
    "metal", "chillout", "classic rock", "soul", "indie rock", "electronica", "folk", "punk",
    "blues", "hard rock", "ambient", "experimental", "Hip-Hop", "country", "easy listening",
    "funk", "electro", "heavy metal", "Progressive rock", "rnb", "indie pop", "House",
)
DATASETS = {
    "MTT": {"name": "MagnaTagATune", "tags": 50, "labels": MTT_LABELS, "genres": MTT_GENRES},
    "MSD": {"name": "Million Song Dataset (Last.fm tags)", "tags": 50, "labels": MSD_LABELS,
            "genres": MSD_GENRES},
}
EMBEDDING_LAYERS = {
    "musicnn": ("penultimate", 200, "batch-normalised 200-unit dense layer before the classifier"),
    "vgg": ("pool5", 256, "flattened pool5 (NHWC order), the input of the classifier"),
}
MODEL_NAMES = ("MTT_musicnn", "MSD_musicnn", "MTT_vgg", "MSD_vgg")
INPUT_SPEC = {
    "name": INPUT_NAME, "dtype": "float32", "shape": ["batch", WINDOW_FRAMES, N_MELS],
    "sample_rate_hz": SAMPLE_RATE_HZ, "channels": "mono", "n_fft": N_FFT,
    "hop_length": HOP_LENGTH, "window": "hann (periodic)", "center": True,
    "pad_mode": "constant", "power": 2.0, "n_mels": N_MELS, "mel_scale": "slaney",
    "mel_norm": "slaney", "fmin_hz": 0.0, "fmax_hz": SAMPLE_RATE_HZ / 2,
    "float16_cast": True, "compression": "log10(10000 * x + 1)", "frames": WINDOW_FRAMES,
    "window_s": WINDOW_FRAMES * HOP_LENGTH / SAMPLE_RATE_HZ,
}
# fmt: on


def dataset_of(name: str) -> str:
    """'MTT' or 'MSD', from a musicnn model name."""
    return name.split("_", 1)[0]


def architecture_of(name: str) -> str:
    """'musicnn' or 'vgg' from a stock model name ('MSD_vgg'); '' for any other model."""
    return name.partition("_")[2]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """A loaded model card; `onnx_path` is verified to match `sha256`."""

    name: str
    onnx_path: Path
    labels: tuple[str, ...]
    genres: tuple[str, ...]
    sha256: str
    embedding_dim: int
    window_frames: int
    n_mels: int
    sample_rate_hz: int
    card_path: Path
    document: dict[str, Any]

    @property
    def unknown_threshold(self) -> float | None:
        """The threshold chosen with the model's head (`calibration.unknown_threshold`), the
        daemon's default when `[smoothing] unknown_threshold` is not set; None if it has none."""
        value = _calibration(self.document).get("unknown_threshold")
        return None if value is None else float(value)

    @property
    def families(self) -> tuple[str, ...]:
        """What the genre decision picks among. A validated family head (its card has
        `validation`) decides among all its outputs and publishes only `genres`, so music of
        a family it cannot name reliably reads as unknown, not as the nearest validated genre;
        any other model decides among its genre vocabulary."""
        return self.labels if "validation" in self.document else self.genres

    @property
    def genre_thresholds(self) -> dict[str, float]:
        """Each published genre's own unknown threshold, chosen on unseen music
        (`calibration.genre_thresholds`); empty when the card has one threshold for all."""
        found = _calibration(self.document).get("genre_thresholds") or {}
        return {genre: float(found[genre]) for genre in self.genres if genre in found}

    def genre_indices(self, genres: tuple[str, ...] | list[str] | None = None) -> list[int]:
        """Indices into `labels` of `genres` (default: the card's genre vocabulary)."""
        chosen = self.genres if genres is None else tuple(genres)
        unknown = [g for g in chosen if g not in self.labels]
        if unknown:
            msg = f"{self.name} has no tag {unknown[0]!r}"
            raise ModelError(msg)
        return [self.labels.index(g) for g in chosen]


def _calibration(document: dict[str, Any]) -> dict[str, Any]:
    calibration = document.get("calibration")
    return calibration if isinstance(calibration, dict) else {}


def genre_vocabulary(card: ModelCard, chosen: tuple[str, ...], *,
                     key: str = "engine.genres") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(what a genre decision picks among, what it may publish): the chosen tags for both (each
    must be a tag of the model), or the card's families and genres when none are chosen; `key`
    names the setting in the error."""
    unknown = [g for g in chosen if g not in card.labels]
    if unknown:
        msg = f"{key}: {card.name} has no tag {unknown[0]!r} (its tags are in its card)"
        raise ConfigError(msg)
    return (chosen, chosen) if chosen else (card.families, card.genres)


def card_document(
    *,
    name: str,
    wheel_sha256: str | None,
    checkpoint_sha256: dict[str, str],
    license_text: str,
    onnx_path: Path,
    parity: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of a model card (written by the importer, read by load_model_card)."""
    dataset = DATASETS[dataset_of(name)]
    layer, dim, description = EMBEDDING_LAYERS[architecture_of(name)]
    return {
        "schema": CARD_SCHEMA,
        "name": name,
        "architecture": architecture_of(name),
        "training_data": {"dataset": dataset["name"], "tags": dataset["tags"]},
        "source": {
            "package": "musicnn",
            "version": MUSICNN_VERSION,
            "wheel": MUSICNN_WHEEL,
            "wheel_sha256": wheel_sha256,
            "checkpoint": f"musicnn/{name}/",
            "checkpoint_sha256": checkpoint_sha256,
            "paper": "Pons & Serra, musicnn: pre-trained convolutional neural networks for "
            "music audio tagging, ISMIR 2019 LBD",
        },
        "license": {"name": "ISC", "file": LICENSE_FILE, "text": license_text},
        "input": INPUT_SPEC,
        "outputs": {
            "tags": {
                "dtype": "float32",
                "shape": ["batch", dataset["tags"]],
                "activation": "sigmoid",
            },
            "embedding": {
                "dtype": "float32",
                "shape": ["batch", dim],
                "layer": layer,
                "description": description,
            },
        },
        "labels": list(dataset["labels"]),
        "genres": list(dataset["genres"]),
        "onnx": {
            "file": onnx_path.name,
            "sha256": sha256_file(onnx_path),
            "bytes": onnx_path.stat().st_size,
        },
        "parity": parity,
    }


def resolve_card_path(name_or_path: str | Path) -> Path:
    """A bare model name → `ENGINES_DIR/<name>.json`; a path to .json or .onnx → its card."""
    path = Path(name_or_path)
    if path.suffix == ".onnx":
        return path.with_suffix(".json")
    if path.suffix == ".json" or path.is_file() or len(path.parts) > 1:
        return path
    return ENGINES_DIR / f"{name_or_path}.json"


def load_model_card(name_or_path: str | Path = DEFAULT_MODEL) -> ModelCard:
    """Load and verify a model card; ModelError if it or its ONNX file is missing or mismatched."""
    card_path = resolve_card_path(name_or_path)
    try:
        document = json.loads(card_path.read_text())
    except FileNotFoundError as exc:
        known = ", ".join(p.stem for p in sorted(ENGINES_DIR.glob("*.json"))) or "none"
        msg = f"no model card {card_path} (packaged models: {known})"
        raise ModelError(msg) from exc
    except (OSError, ValueError) as exc:
        msg = f"cannot read model card {card_path}: {exc}"
        raise ModelError(msg) from exc
    try:
        onnx_path = card_path.parent / document["onnx"]["file"]
        model_card = ModelCard(
            name=document["name"],
            onnx_path=onnx_path,
            labels=tuple(document["labels"]),
            genres=tuple(document["genres"]),
            sha256=document["onnx"]["sha256"],
            embedding_dim=int(document["outputs"]["embedding"]["shape"][1]),
            window_frames=int(document["input"]["frames"]),
            n_mels=int(document["input"]["n_mels"]),
            sample_rate_hz=int(document["input"]["sample_rate_hz"]),
            card_path=card_path,
            document=document,
        )
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        msg = f"model card {card_path} is malformed ({exc.__class__.__name__}: {exc})"
        raise ModelError(msg) from exc
    if len(model_card.labels) != int(document["outputs"]["tags"]["shape"][1]):
        msg = f"model card {card_path} lists {len(model_card.labels)} labels for a wider output"
        raise ModelError(msg)
    model_card.genre_indices()
    calibration = _calibration(document)
    thresholds = {"unknown_threshold": calibration.get("unknown_threshold")}
    per_genre = calibration.get("genre_thresholds") or {}
    if not isinstance(per_genre, dict):
        msg = f"model card {card_path}: calibration.genre_thresholds must map genres to numbers"
        raise ModelError(msg)
    thresholds |= {f"genre_thresholds.{genre}": value for genre, value in per_genre.items()}
    for key, threshold in thresholds.items():
        if threshold is not None and not (isinstance(threshold, int | float)
                                          and not isinstance(threshold, bool)
                                          and 0 <= threshold <= 1):
            msg = (f"model card {card_path}: calibration.{key} must be a number 0..1, "
                   f"got {threshold!r}")
            raise ModelError(msg)
    try:
        actual = sha256_file(onnx_path)
    except OSError as exc:
        msg = f"cannot read model {onnx_path}: {exc.strerror}"
        raise ModelError(msg) from exc
    if actual != model_card.sha256:
        msg = (
            f"model {onnx_path} does not match its card "
            f"(sha256 {actual[:12]}…, card {model_card.sha256[:12]}…)"
        )
        raise ModelError(msg)
    return model_card
