"""`streamclf evaluate MODEL DATASET` for a trained head: its scores, and the baseline's.

`evaluate_model` runs the exported file through a runtime engine (no torch) on a split of a
dataset and scores it per window (what the daemon publishes) and per file (mean of its
windows), beside the zero-shot baseline of the stock model's own genre tags mapped onto the
classes whose names match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from streamclf.errors import ConfigError
from streamclf.evaluate import (
    ALL_FILES,
    Score,
    Selection,
    confusion_matrix,
    decide,
    per_class_prf,
    select_files,
    spread_windows,
)
from streamclf.models.card import ModelCard, dataset_of, load_model_card
from streamclf.models.taxonomy import VOCABULARIES, family_scores, zero_shot_family
from streamclf.train.datasets import Item, SplitOptions, assign_splits, load_dataset
from streamclf.train.features import (
    SHA_PREFIX,
    EmbeddingCache,
    WindowOutputs,
    embedding_engine,
    file_sha256,
    window_hop_frames,
)

log = structlog.get_logger(__name__)


def baseline_mapping(classes: tuple[str, ...], base: ModelCard) -> np.ndarray:
    """float32 [C, n_tags]: the stock tags that vote for each class, matched by name.

    A class named like a genre family (streamclf.models.taxonomy) gets that family's tags in
    the base model's vocabulary; otherwise a tag of the same name (case-insensitive); otherwise
    none, and the baseline can never predict it.
    """
    labels, family_tags = VOCABULARIES[dataset_of(base.name)]
    lowered = [tag.lower() for tag in labels]
    mapping = np.zeros((len(classes), len(labels)), np.float32)
    for row, name in enumerate(classes):
        key = name.lower()
        tags = family_tags.get(key, (labels[lowered.index(key)],) if key in lowered else ())
        for tag in tags:
            mapping[row, labels.index(tag)] = 1.0
    return mapping


@dataclass(frozen=True)
class Evaluation:
    """Scores of a custom model and its baseline on the selected files, per window and per file."""

    classes: tuple[str, ...]
    scores: list[Score]
    mapped_classes: list[str]
    selection: Selection
    seen_in_training: int

    @property
    def files(self) -> int:
        return len(self.selection.items)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for score in self.scores:
            p, r, f = per_class_prf(score.cm)
            rows.append(
                {
                    **score.to_dict(self.classes),
                    "per_class": {
                        c: {
                            "precision": float(p[i]),
                            "recall": float(r[i]),
                            "f1": float(f[i]),
                            "support": int(score.cm[i].sum()),
                        }
                        for i, c in enumerate(self.classes)
                    },
                }
            )
        return {
            "split": self.selection.split,
            "files": self.files,
            "unscored_files": self.selection.unscored,
            "seen_in_training": self.seen_in_training,
            "baseline_classes": self.mapped_classes,
            "scores": rows,
        }


def _scores(
    name: str,
    probs: list[np.ndarray],
    truth: np.ndarray,
    n_classes: int,
    reachable: np.ndarray | None = None,
    threshold: float = 0.0,
) -> list[Score]:
    """Per-window and per-file scores of window probabilities, one array [n_i, C] per file;
    "unknown" where the best probability is under `threshold` (a zero-shot baseline: none)."""

    def pred(p: np.ndarray) -> np.ndarray:
        if reachable is None:
            return decide(p, threshold=threshold)
        return zero_shot_family(p, mapping=reachable)

    windows = np.concatenate(probs)
    window_truth = np.repeat(truth, [len(p) for p in probs])
    per_file = np.stack([p.mean(axis=0) for p in probs])
    return [
        Score(
            f"{name} (windows)",
            confusion_matrix(truth=window_truth, pred=pred(windows), n_classes=n_classes),
            threshold=threshold,
        ),
        Score(
            f"{name} (files)",
            confusion_matrix(truth=truth, pred=pred(per_file), n_classes=n_classes),
            threshold=threshold,
        ),
    ]


def is_trained_head(model: str | Path) -> bool:
    """True for a model exported by `streamclf train` (the CLI sends those to run_evaluate_head)."""
    return "head" in load_model_card(model).document


def evaluate_model(
    model: str | Path,
    source: str | Path,
    *,
    split: str | None = None,
    engine: str | None = None,
    cache_dir: str | Path | None = None,
    threshold: float = 0.0,
    max_windows: int | None = None,
) -> Evaluation:
    """Score a custom model on a dataset: every file of a folder it never trained on, else
    `split` ("train", "val", "test" or "all"; default "test") split as the card records.

    Files the model was trained or validated on are counted and logged; files of a class the
    model does not have are left out and reported (`Selection`).
    """
    card = load_model_card(model)
    training = card.document.get("training")
    if not training:
        msg = (
            f"{card.name} is not a trained head (its card has no 'training'); for the stock "
            "models use the genre-family evaluation"
        )
        raise ConfigError(msg)
    dataset = load_dataset(source, min_classes=1)
    seen = set(training.get("train_files_sha256", ()))
    sha = {item.path: file_sha256(item.path)[:SHA_PREFIX] for item in dataset.items}
    fitted_here = not seen.isdisjoint(sha.values())
    if fitted_here or split not in (None, ALL_FILES):
        options = SplitOptions(**training["splits"])
        dataset = assign_splits(dataset, val_share=options.val_share,
                                test_share=options.test_share, seed=options.seed,
                                use_given=options.use_given)
    selection = select_files(dataset, split=split, classes=card.labels, fitted_here=fitted_here)
    items = selection.items
    base = load_model_card(card.document["base_model"]["name"])
    hop = window_hop_frames(training.get("hop_s", 3.0))
    custom_out = _outputs(card, items, engine=engine, hop=hop, cache_dir=cache_dir)
    reused = sum(sha[item.path] in seen for item in items)
    if reused:
        log.warning("evaluated_on_training_files", files=reused, of=len(items))
    truth = np.array([card.labels.index(item.label) for item in items])
    n = len(card.labels)
    picks = [spread_windows(len(o.tags), max_windows) for o in custom_out]
    probs = [o.tags[pick] for o, pick in zip(custom_out, picks, strict=True)]
    scores = _scores(card.name, probs, truth, n, threshold=threshold)
    mapping = baseline_mapping(card.labels, base)
    mapped = [c for c, row in zip(card.labels, mapping, strict=True) if row.any()]
    if mapped:
        base_out = _outputs(base, items, engine=engine, hop=hop, cache_dir=cache_dir)
        zero_shot = [family_scores(tags=o.tags[pick], mapping=mapping)
                     for o, pick in zip(base_out, picks, strict=True)]
        scores += _scores(f"{base.name} zero-shot", zero_shot, truth, n, reachable=mapping)
    return Evaluation(
        classes=card.labels,
        scores=scores,
        mapped_classes=mapped,
        selection=selection,
        seen_in_training=reused,
    )


def _outputs(
    card: ModelCard,
    items: list[Item],
    *,
    engine: str | None,
    hop: int,
    cache_dir: str | Path | None,
) -> list[WindowOutputs]:
    cache = EmbeddingCache(card, embedding_engine(card, engine), hop_frames=hop, root=cache_dir)
    return cache.get_many([(item.path, None) for item in items], description=card.name)


def render_per_class(score: Score, classes: tuple[str, ...]) -> str:
    """A markdown table of precision, recall, F1 and support per class."""
    p, r, f = per_class_prf(score.cm)
    lines = ["| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {c} | {p[i]:.3f} | {r[i]:.3f} | {f[i]:.3f} | {int(score.cm[i].sum())} |"
        for i, c in enumerate(classes)
    ]
    return "\n".join(lines)
