"""`streamclf evaluate`: how often the published genre is right, on real music held out from
fitting.

The metrics are pure functions of a confusion matrix (rows: true family, columns: predicted
family, plus a last column for "unknown"), so a trained head is scored the same way.
`unknown` counts as a miss in accuracy and recall; it never counts as a wrong genre in precision.

A dataset is a folder of family folders (`FOLDER/<family>/*.ogg`), a CSV, or a folder with a
`manifest.csv` (path,label[,split,artist,…]), as `datasets/genres` is. A folder the model never
fitted on is scored whole; one that declares its splits, or holds files the model was fitted on,
is scored on its held-out "test" split unless `--split` says otherwise (`select_files`). Files of
a class the model cannot name are counted and reported, never silently dropped. Each scored
clip is cut into musicnn's own non-overlapping 3 s windows and each window is scored:

- each single musicnn model zero-shot: the family whose mapped tags score highest
  (streamclf.models.taxonomy), over the families that model has tags for;
- the fused model: its calibrated family distribution, "unknown" under the threshold.

The fused graph also outputs both taggers' tags, so one pass over the windows scores all three.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from streamclf.errors import ConfigError, ModelError
from streamclf.models.taxonomy import FAMILIES, family_scores, vocabulary_matrix, zero_shot_family
from streamclf.train.datasets import SPLIT_ALIASES, Dataset, Item, load_dataset

log = structlog.get_logger(__name__)

UNKNOWN = -1
BATCH_WINDOWS = 32
FUSED_MODEL = "fused_musicnn"
ALL_FILES = "all"
HELD_OUT_SPLIT = "test"


# -- metrics (pure) ---------------------------------------------------------------------------


def decide(probs: np.ndarray, *, threshold: float) -> np.ndarray:
    """int [N]: argmax of probs [N, C], or UNKNOWN (-1) where the best is under `threshold`."""
    best = probs.argmax(axis=1)
    return np.where(probs.max(axis=1) >= threshold, best, UNKNOWN)


def confusion_matrix(*, truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """int64 [C, C + 1]: counts of (true class, predicted class); column C counts UNKNOWN."""
    cm = np.zeros((n_classes, n_classes + 1), np.int64)
    np.add.at(cm, (truth, np.where(pred == UNKNOWN, n_classes, pred)), 1)
    return cm


def accuracy(cm: np.ndarray) -> float:
    """Share of all windows called right (unknown is not right)."""
    total = cm.sum()
    return float(np.trace(cm[:, :-1]) / total) if total else 0.0


def unknown_share(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(cm[:, -1].sum() / total) if total else 0.0


def per_class_prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 per class [C]; 0 where undefined (no predictions or no truth)."""
    hits = np.diag(cm[:, :-1]).astype(np.float64)
    predicted, actual = cm[:, :-1].sum(axis=0), cm.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(hits), where=denom > 0)
    return precision, recall, f1


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the truth (absent classes would only add zeros)."""
    present = cm.sum(axis=1) > 0
    return float(per_class_prf(cm)[2][present].mean()) if present.any() else 0.0


@dataclass(frozen=True)
class Score:
    """One model's result on one split."""

    name: str
    cm: np.ndarray  # [C, C + 1]
    threshold: float = 0.0

    @property
    def accuracy(self) -> float:
        return accuracy(self.cm)

    @property
    def macro_f1(self) -> float:
        return macro_f1(self.cm)

    @property
    def unknown_share(self) -> float:
        return unknown_share(self.cm)

    def to_dict(self, classes: Sequence[str]) -> dict:
        return {"model": self.name, "threshold": self.threshold, "accuracy": self.accuracy,
                "macro_f1": self.macro_f1, "unknown_share": self.unknown_share,
                "windows": int(self.cm.sum()), "classes": list(classes),
                "confusion": self.cm.tolist()}


def render_table(scores: Sequence[Score]) -> str:
    """A markdown table: model, threshold, accuracy, macro-F1, unknown share, windows."""
    lines = ["| model | unknown threshold | accuracy | macro-F1 | unknown | windows |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {s.name} | {s.threshold:.2f} | {s.accuracy:.3f} | {s.macro_f1:.3f} | "
              f"{s.unknown_share:.3f} | {int(s.cm.sum())} |" for s in scores]
    return "\n".join(lines)


def shown_classes(cm: np.ndarray) -> list[int]:
    """Classes worth a row or column: those in the truth or predicted at least once."""
    return [i for i in range(cm.shape[0]) if cm[i].sum() or cm[:, i].sum()]


def render_confusion(cm: np.ndarray, classes: Sequence[str]) -> str:
    """A markdown confusion matrix restricted to the classes that occur; last column unknown."""
    keep = shown_classes(cm)
    head = "| true \\ predicted | " + " | ".join(classes[i] for i in keep) + " | unknown |"
    lines = [head, "| --- |" + " ---: |" * (len(keep) + 1)]
    for i in keep:
        if cm[i].sum():
            cells = [str(cm[i, j]) for j in keep] + [str(cm[i, -1])]
            lines.append(f"| {classes[i]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_confusion(cm: np.ndarray, classes: Sequence[str], out: Path, *, title: str) -> None:
    """The row-normalised confusion matrix as a PNG (matplotlib, imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = shown_classes(cm)
    rows = [i for i in keep if cm[i].sum()]
    sub = cm[np.ix_(rows, [*keep, cm.shape[1] - 1])].astype(float)
    norm = sub / sub.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * sub.shape[1], 1.0 + 0.6 * len(rows)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(sub.shape[1]), [*(classes[i] for i in keep), "unknown"], rotation=45,
                  ha="right")
    ax.set_yticks(range(len(rows)), [classes[i] for i in rows])
    for (r, c), n in np.ndenumerate(sub):
        if n:
            ax.text(c, r, int(n), ha="center", va="center",
                    color="white" if norm[r, c] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# -- the dataset ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One row of a dataset manifest."""

    path: Path
    label: str
    split: str
    artist: str = ""
    extra: dict = field(default_factory=dict, compare=False)


def load_manifest(dataset: str | Path) -> list[Clip]:
    """Clips of `dataset` (a folder holding manifest.csv, or the CSV); paths made absolute."""
    path = Path(dataset)
    manifest = path / "manifest.csv" if path.is_dir() else path
    try:
        with open(manifest, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        msg = f"cannot read dataset manifest {manifest}: {exc.strerror}"
        raise ConfigError(msg) from exc
    try:
        clips = [Clip(path=manifest.parent / row["path"], label=row["label"], split=row["split"],
                      artist=row.get("artist", ""), extra=row) for row in rows]
    except KeyError as exc:
        msg = f"{manifest}: missing column {exc.args[0]!r} (need path,label,split)"
        raise ConfigError(msg) from exc
    unknown = sorted({c.label for c in clips} - set(FAMILIES))
    if unknown:
        msg = f"{manifest}: label {unknown[0]!r} is not a family ({', '.join(FAMILIES)})"
        raise ConfigError(msg)
    return clips


@dataclass(frozen=True)
class Selection:
    """The files `evaluate` scores, which split they are and why, and those it cannot score."""

    items: list[Item]
    split: str  # a split name, or "all"
    reason: str
    unscored: dict[str, int]  # class the model cannot name -> files of it left out

    def describe(self) -> str:
        text = f"{len(self.items)} files, split {self.split!r} ({self.reason})"
        if self.unscored:
            left = ", ".join(f"{label} {n}" for label, n in sorted(self.unscored.items()))
            text += f"; not scored, a class the model cannot name: {left}"
        return text


def select_files(dataset: Dataset, *, split: str | None, classes: Collection[str],
                 fitted_here: bool) -> Selection:
    """The files of `dataset` to score: as `split` asks, or else by what the folder is.

    Without `split`, a folder holding files the model was fitted on (`fitted_here`) or declaring
    its own splits is scored on its "test" split, any other folder whole: a held-out folder
    counts every file. Files whose class is not in `classes` are left out and counted.
    """
    if split is None:
        if fitted_here:
            split, reason = HELD_OUT_SPLIT, "the model was fitted on part of this folder"
        elif any(item.split for item in dataset.items):
            split, reason = HELD_OUT_SPLIT, "the folder's own held-out split"
        else:
            split, reason = ALL_FILES, "every file: the model never fitted on this folder"
    else:
        split, reason = SPLIT_ALIASES.get(split.lower(), split.lower()), "as asked"
    items = list(dataset.items) if split == ALL_FILES else dataset.split(split)
    if not items:
        msg = f"dataset {dataset.source} has no files in split {split!r}"
        raise ConfigError(msg)
    unscored = Counter(item.label for item in items if item.label not in classes)
    scored = [item for item in items if item.label in classes]
    if not scored:
        msg = (f"none of the {len(items)} files of {dataset.source} is of a class the model "
               f"names ({', '.join(classes)})")
        raise ConfigError(msg)
    return Selection(scored, split, reason, dict(unscored))


def stock_classes(card) -> list[str]:
    """The families a stock model names: the fused model's labels, a tagger's mapped families."""
    if "mtt_tags" in card.document.get("outputs", {}):
        return list(card.labels)
    named = vocabulary_matrix(card.name.split("_", 1)[0]).any(axis=1)
    return [family for family, yes in zip(FAMILIES, named, strict=True) if yes]


def spread_windows(n: int, max_windows: int | None) -> np.ndarray:
    """Indices of at most `max_windows` of `n` windows, evenly spread (all when None)."""
    if max_windows is None or n <= max_windows:
        return np.arange(n)
    return np.linspace(0, n - 1, max_windows).round().astype(int)


def clip_windows(clips: Sequence[Clip | Item], *, max_windows: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames [N, 187, 96], family index [N], clip index [N] of musicnn's 3 s windows.

    `max_windows` keeps that many windows per clip, evenly spread, for quick runs.
    """
    from streamclf.features.framer import logmel_windows_for_file

    frames, labels, owners = [], [], []
    for k, clip in enumerate(clips):
        windows = logmel_windows_for_file(clip.path)
        windows = [windows[i] for i in spread_windows(len(windows), max_windows)]
        frames += [w.frames for w in windows]
        labels += [FAMILIES.index(clip.label)] * len(windows)
        owners += [k] * len(windows)
    return np.stack(frames), np.array(labels), np.array(owners)


def run_outputs(onnx_path: Path, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of an ONNX model over frames [N, 187, 96], by name, in batches (ORT, CPU).

    Evaluation needs the fused graph's side outputs (mtt_tags, msd_tags), which the Engine
    contract does not carry, so this opens a plain ONNX Runtime session.
    """
    from streamclf.backends.onnx import default_threads, open_session

    session = open_session(onnx_path, threads=default_threads())
    names = [o.name for o in session.get_outputs()]
    chunks = [session.run(names, {"logmel": frames[i:i + BATCH_WINDOWS]})
              for i in range(0, len(frames), BATCH_WINDOWS)]
    return {name: np.concatenate([c[j] for c in chunks]) for j, name in enumerate(names)}


def zero_shot_score(name: str, tags: np.ndarray, truth: np.ndarray) -> Score:
    """Score one musicnn tagger's zero-shot family mapping; name starts with MTT or MSD."""
    mapping = vocabulary_matrix(name.split("_", 1)[0])
    pred = zero_shot_family(family_scores(tags=tags, mapping=mapping), mapping=mapping)
    return Score(f"{name} zero-shot", confusion_matrix(truth=truth, pred=pred,
                                                       n_classes=len(FAMILIES)))


def evaluate(model: str | Path, clips: Sequence[Clip | Item], *, threshold: float | None = None,
             max_windows: int | None = None) -> list[Score]:
    """Scores of `model` on `clips`: single models zero-shot; a fused model also its parts.

    A fused model is scored twice: forced choice (threshold 0, comparable with the single
    models) and with `threshold` (default: the one its card recommends).
    """
    from streamclf.models.card import load_model_card

    card = load_model_card(model)
    frames, truth, _ = clip_windows(clips, max_windows=max_windows)
    return score_outputs(card, run_outputs(card.onnx_path, frames), truth, threshold=threshold)


def score_outputs(card, out: dict[str, np.ndarray], truth: np.ndarray, *,
                  threshold: float | None = None) -> list[Score]:
    """Scores from a model's outputs (`run_outputs`) on windows whose true families are `truth`."""
    if "mtt_tags" not in out:
        if len(card.labels) != 50 or card.name.split("_", 1)[0] not in ("MTT", "MSD"):
            msg = f"{card.name}: neither a musicnn tagger nor a fused model"
            raise ModelError(msg)
        return [zero_shot_score(card.name, out["tags"], truth)]
    if threshold is None:
        threshold = float(card.document.get("calibration", {}).get("unknown_threshold", 0.0))
    index = [FAMILIES.index(label) for label in card.labels]
    probs = np.zeros((len(truth), len(FAMILIES)), np.float32)
    probs[:, index] = out["tags"]
    scores = [zero_shot_score("MTT_musicnn", out["mtt_tags"], truth),
              zero_shot_score("MSD_musicnn", out["msd_tags"], truth)]
    for t in sorted({0.0, threshold}):
        cm = confusion_matrix(truth=truth, pred=decide(probs, threshold=t), n_classes=len(FAMILIES))
        scores.append(Score(card.name, cm, threshold=t))
    return scores


def check_stock_flags(args, card) -> None:
    """Refuse, in one line, the options that a stock model's evaluation cannot honour."""
    if args.engine not in (None, "auto", "onnxruntime"):
        msg = (f"--engine {args.engine}: {card.name} is scored with ONNX Runtime on the CPU "
               "(it needs every output of the graph); use --engine onnxruntime or leave it out")
        raise ConfigError(msg)
    for flag, value in (("--cache-dir", args.cache_dir), ("--out-dir", args.out_dir)):
        if value is not None:
            msg = f"{flag} is for trained heads; {card.name} is a stock model"
            raise ConfigError(msg)
    if args.threshold is not None and "mtt_tags" not in card.document.get("outputs", {}):
        msg = (f"--threshold: {card.name} is scored zero-shot (forced choice, its tags are not a "
               "family distribution); the unknown threshold applies to the fused model")
        raise ConfigError(msg)


def run_evaluate(args) -> int:
    """CLI: args.model (None → fused default), args.dataset, args.split (None → by the folder),
    args.threshold (None → the card's), args.max_windows (None → all), args.json, args.plot."""
    from streamclf.models.card import load_model_card

    card = load_model_card(args.model or FUSED_MODEL)
    check_stock_flags(args, card)
    selection = select_files(load_dataset(args.dataset, min_classes=1), split=args.split,
                             classes=stock_classes(card), fitted_here=False)
    scores = evaluate(args.model or FUSED_MODEL, selection.items, threshold=args.threshold,
                      max_windows=args.max_windows)
    if args.plot:
        plot_confusion(scores[-1].cm, FAMILIES, Path(args.plot),
                       title=f"{scores[-1].name} on {selection.split} "
                             f"(threshold {scores[-1].threshold:.2f})")
    if args.json:
        json.dump({"split": selection.split, "clips": len(selection.items),
                   "unscored_files": selection.unscored,
                   "scores": [s.to_dict(FAMILIES) for s in scores]}, sys.stdout, indent=1)
        print()
        return 0
    print(selection.describe() + "\n")
    print(render_table(scores))
    for score in scores:
        print(f"\n{score.name} (threshold {score.threshold:.2f})\n")
        print(render_confusion(score.cm, FAMILIES))
    return 0
