"""`streamclf train DATASET` and `streamclf evaluate MODEL DATASET` for custom heads.

`train_model` embeds every file once with the frozen stock model (cached), adds augmented
copies of the training files, fits a head with early stopping on the validation split, and
exports musicnn + head as one ONNX file with its card. `run_evaluate_head` prints or writes
what `streamclf.train.evaluation` scored.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamclf.errors import ConfigError
from streamclf.evaluate import plot_confusion, render_confusion, render_table
from streamclf.models.card import MODEL_NAMES, ModelCard, load_model_card
from streamclf.train.augment import AugmentConfig, draw
from streamclf.train.datasets import SplitOptions, split_dataset, summary
from streamclf.train.evaluation import evaluate_model, render_per_class
from streamclf.train.features import (
    SHA_PREFIX,
    EmbeddingCache,
    embedding_engine,
    file_sha256,
    window_hop_frames,
)

if TYPE_CHECKING:  # the trainer imports torch; evaluation must not
    from streamclf.train.trainer import TrainConfig

BASE_MODEL = "MSD_musicnn"  # the frozen backbone: its 200-d penultimate layer is the embedding


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
        base, embedding_engine(base, engine), hop_frames=window_hop_frames(hop_s), root=cache_dir
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


def _window_accuracy(head, tracks) -> float:
    import torch

    from streamclf.train.trainer import single_windows

    x, y = single_windows(tracks)
    with torch.no_grad():
        return float((head(x).argmax(dim=1) == y).float().mean())


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
