"""`streamclf train DATASET` and `streamclf evaluate MODEL DATASET` for custom heads.

`train_model` embeds every file once with the frozen stock model (cached), adds augmented
copies of the training files, fits a head with early stopping on the validation split, and
exports musicnn + head as one ONNX file with its card. `evaluate_model` runs that file through
a runtime engine (no torch) on a split of a dataset and scores it per window (what the daemon
publishes) and per file (mean of its windows), beside the zero-shot baseline of the stock
model's own genre tags mapped onto the classes whose names match.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from streamclf.backends.runner import load_engine
from streamclf.errors import ConfigError
from streamclf.evaluate import (
    ALL_FILES,
    Score,
    Selection,
    confusion_matrix,
    decide,
    per_class_prf,
    plot_confusion,
    render_confusion,
    render_table,
    select_files,
    spread_windows,
)
from streamclf.features.mel import frames_for_seconds
from streamclf.models.card import MODEL_NAMES, ModelCard, dataset_of, load_model_card
from streamclf.models.taxonomy import VOCABULARIES, family_scores, zero_shot_family
from streamclf.train.augment import AugmentConfig, draw
from streamclf.train.datasets import Dataset, Item, assign_splits, load_dataset, summary
from streamclf.train.features import EmbeddingCache, WindowOutputs, file_sha256

if TYPE_CHECKING:  # the trainer imports torch; evaluation must not
    from streamclf.train.trainer import TrainConfig

log = structlog.get_logger(__name__)

BASE_MODEL = "MSD_musicnn"  # the frozen backbone: its 200-d penultimate layer is the embedding
SHA_PREFIX = 16  # hex digits of a file's sha256 recorded in the card (enough to spot reuse)


@dataclass(frozen=True)
class SplitOptions:
    """How a dataset is split; recorded in the card so `evaluate` can split it the same way."""

    val_share: float = 0.2
    test_share: float = 0.2
    seed: int = 0
    use_given: bool = True


def split_dataset(source: str | Path, options: SplitOptions) -> Dataset:
    return assign_splits(
        load_dataset(source),
        val_share=options.val_share,
        test_share=options.test_share,
        seed=options.seed,
        use_given=options.use_given,
    )


def _engine_for(card: ModelCard, kind: str | None):
    return load_engine(card, kind=kind or "onnxruntime", max_batch=16)


def train_model(
    source: str | Path,
    *,
    out: str | Path,
    config: TrainConfig,
    augment: AugmentConfig | None = None,
    splits: SplitOptions | None = None,
    base_model: str = BASE_MODEL,
    engine: str | None = None,
    hop_s: float = 3.0,
    cache_dir: str | Path | None = None,
) -> tuple[ModelCard, dict[str, Any]]:
    """Train a head of `config` on `source` and export it to `out`; returns (card, report)."""
    from streamclf.train.export import export_custom
    from streamclf.train.trainer import Track, train_head

    augment = augment or AugmentConfig()
    splits = splits or SplitOptions()
    dataset = split_dataset(source, splits)
    classes = dataset.classes
    train_items, val_items = dataset.split("train"), dataset.split("val")
    if not train_items:
        msg = f"dataset {source} has no training files after splitting"
        raise ConfigError(msg)
    missing = sorted(set(classes) - {item.label for item in train_items})
    if missing:
        msg = f"class {missing[0]!r} has no training file; add files or change the split"
        raise ConfigError(msg)
    if base_model not in MODEL_NAMES:
        msg = (f"--base: a head sits on one stock musicnn model ({', '.join(MODEL_NAMES)}), "
               f"not {base_model!r}")
        raise ConfigError(msg)
    base = load_model_card(base_model)
    cache = EmbeddingCache(
        base, _engine_for(base, engine), hop_frames=_hop_frames(hop_s), root=cache_dir
    )
    rng = np.random.default_rng(splits.seed)
    jobs = [(item, None) for item in dataset.items]
    jobs += [(item, draw(rng, augment)) for item in train_items for _ in range(augment.copies)]
    outputs = cache.get_many([(item.path, aug) for item, aug in jobs])
    index = {label: i for i, label in enumerate(classes)}
    tracks: dict[str, list] = {"train": [], "val": [], "test": []}
    for (item, aug), result in zip(jobs, outputs, strict=True):
        if aug is None or item.split == "train":
            tracks[item.split].append(Track(result.embedding, index[item.label]))
    result = train_head(tracks["train"], tracks["val"], n_classes=len(classes), config=config)
    report = {
        "dataset": str(source),
        "classes": list(classes),
        "files": summary(dataset),
        "splits": asdict(splits),
        "config": asdict(config),
        "augmentation": {**asdict(augment), "snr_db": list(augment.snr_db)},
        "hop_s": hop_s,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best": result.history[result.best_epoch - 1],
        "window_accuracy": {
            split: _window_accuracy(result.head, tracks[split])
            for split in ("val", "test")
            if tracks[split]
        },
        "embeddings": {"computed": cache.misses, "from_cache": cache.hits},
        "train_files_sha256": sorted(
            file_sha256(item.path)[:SHA_PREFIX] for item in train_items + val_items
        ),
    }
    spec = {
        "kind": config.head,
        "dim": base.embedding_dim,
        "hidden": config.hidden,
        "segment_windows": config.segment_windows,
    }
    card = export_custom(
        result.head, base=base, classes=classes, out=out, head_spec=spec, training=report
    )
    return card, report


def _hop_frames(hop_s: float) -> int:
    hop = frames_for_seconds(hop_s)
    if hop < 1:
        msg = f"--hop: must be at least {1 / 62.5:.3f} s, got {hop_s}"
        raise ConfigError(msg)
    return hop


def _window_accuracy(head, tracks) -> float:
    import torch

    from streamclf.train.trainer import single_windows

    x, y = single_windows(tracks)
    with torch.no_grad():
        return float((head(x).argmax(dim=1) == y).float().mean())


# -- evaluation (no torch) --------------------------------------------------------------------


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
    hop = _hop_frames(training.get("hop_s", 3.0))
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
    cache = EmbeddingCache(card, _engine_for(card, engine), hop_frames=hop, root=cache_dir)
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


# -- the CLI ----------------------------------------------------------------------------------


def run_train(args) -> int:
    """CLI `streamclf train DATASET`; see docs/training.md for every option."""
    out = args.out or Path(f"{Path(args.dataset).stem}-{args.head}.onnx")
    dataset, library = args.dataset, None
    if args.labels_from == "tags":  # before torch loads: a bad library is told at once
        from streamclf.train.library import labels_csv_for, labels_from_tags

        library = labels_from_tags(args.dataset, genre_map=args.genre_map, model=out)
        dataset = labels_csv_for(out)
    elif args.genre_map is not None:
        msg = "--genre-map maps GENRE tags: use it with --labels-from tags"
        raise ConfigError(msg)
    from streamclf.train.trainer import TrainConfig

    config = TrainConfig(
        head=args.head,
        hidden=args.hidden,
        dropout=args.dropout,
        segment_windows=args.segment,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
    )
    augment = AugmentConfig(copies=args.augment, snr_db=(args.snr_db, args.snr_db + 20.0))
    splits = SplitOptions(
        val_share=args.val_share,
        test_share=args.test_share,
        seed=args.seed,
        use_given=not args.ignore_splits,
    )
    card, report = train_model(
        dataset,
        out=out,
        config=config,
        augment=augment,
        splits=splits,
        base_model=args.base,
        engine=args.engine,
        hop_s=args.hop,
        cache_dir=args.cache_dir,
    )
    accuracy = ", ".join(f"{k} {v:.3f}" for k, v in report["window_accuracy"].items())
    print(
        f"{card.onnx_path}: {len(card.labels)} classes ({', '.join(card.labels)}); "
        f"{report['epochs_run']} epochs, best {report['best_epoch']}; "
        f"window accuracy {accuracy or 'n/a (no val/test files)'}"
    )
    if library is not None:
        from streamclf.train.library import report_unseen_artists

        print(report_unseen_artists(
            card.onnx_path, library, report, engine=args.engine, cache_dir=args.cache_dir
        ))  # fmt: skip
    print(f"next: streamclf evaluate {card.onnx_path} {dataset}")
    return 0


def run_evaluate_head(args) -> int:
    """CLI `streamclf evaluate MODEL DATASET` for a trained head."""
    evaluation = evaluate_model(
        args.model,
        args.dataset,
        split=args.split,
        engine=args.engine,
        cache_dir=args.cache_dir,
        threshold=args.threshold or 0.0,
        max_windows=args.max_windows,
    )
    classes = evaluation.classes
    split = evaluation.selection.split
    if args.plot:
        score = evaluation.scores[0]
        plot_confusion(score.cm, classes, Path(args.plot), title=f"{score.name}, {split}")
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for score in evaluation.scores:
            stem = score.name.replace(" ", "-").replace("(", "").replace(")", "")
            plot_confusion(
                score.cm,
                classes,
                out_dir / f"confusion-{stem}.png",
                title=f"{score.name}, {split}",
            )
        (out_dir / "evaluation.json").write_text(json.dumps(evaluation.to_dict(), indent=1) + "\n")
    if args.json:
        json.dump(evaluation.to_dict(), sys.stdout, indent=1)
        print()
        return 0
    print(
        f"{evaluation.selection.describe()}; zero-shot baseline covers "
        f"{', '.join(evaluation.mapped_classes) or 'no class'}\n"
    )
    print(render_table(evaluation.scores))
    for score in evaluation.scores:
        print(f"\n{score.name}\n")
        print(render_per_class(score, classes))
        print()
        print(render_confusion(score.cm, classes))
    return 0
