"""How much of a station's music a head needs: accuracy on unseen artists by tracks per class.

For each of `--repeats` artist splits (seeded; every track of an artist on one side) the
held-out side is fixed, and a head is trained as `streamclf train` trains one (same defaults,
validation carved by artist from the chosen tracks, augmented copies) on 5, 10, 20 and all
training tracks per class, drawn at random from the training side. Each head and the shipped
default (fused_musicnn, forced choice, no training on this collection) are scored on the same
held-out tracks, per 3 s window and per track (mean of its windows' probabilities). A step that
a class cannot fill on a split is reported as missing for that split, never filled up.

    .venv/bin/python tools/learning_curve.py datasets/genres
    .venv/bin/python tools/learning_curve.py LIBRARY --labels-from tags --genre-map map.toml

Needs the train extra (torch). Embeddings are cached as for `streamclf train`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamclf.errors import StreamclfError
from streamclf.train.datasets import Dataset, Item, group_split, load_dataset

if TYPE_CHECKING:
    from streamclf.train.trainer import TrainConfig

DEFAULT_MODEL = "fused_musicnn"
STEPS = ("5", "10", "20", "all")


def pick_per_class(
    items: Sequence[Item], *, per_class: int | None, rng: np.random.Generator
) -> tuple[list[Item], dict[str, int]]:
    """`per_class` random items of every class (None: all), and the classes that fall short.

    Returns (chosen items, {class: tracks it has}) where the second is empty when every class
    could give `per_class` tracks; the choice is then made, otherwise nothing is chosen.
    """
    by_class: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_class[item.label].append(item)
    if per_class is None:
        return list(items), {}
    short = {label: len(v) for label, v in sorted(by_class.items()) if len(v) < per_class}
    if short:
        return [], short
    chosen = []
    for label in sorted(by_class):
        pool = by_class[label]
        chosen += [pool[i] for i in sorted(rng.choice(len(pool), per_class, replace=False))]
    return chosen, {}


def accuracies(probs: Sequence[np.ndarray], truth: Sequence[int]) -> tuple[float, float]:
    """(per-window, per-track) accuracy of window probabilities [n_i, C], one array per track."""
    windows = np.concatenate([p.argmax(axis=1) == t for p, t in zip(probs, truth, strict=True)])
    tracks = [p.mean(axis=0).argmax() == t for p, t in zip(probs, truth, strict=True)]
    return float(windows.mean()), float(np.mean(tracks))


def mean_spread(values: Sequence[float]) -> str:
    """"0.62 ± 0.05 (0.55–0.70)": mean, standard deviation and range over splits."""
    if not values:
        return "—"
    v = np.asarray(values)
    return f"{v.mean():.2f} ± {v.std():.2f} ({v.min():.2f}–{v.max():.2f})"


@dataclass(frozen=True)
class Embedded:
    """Cached outputs per file: the base model's embeddings (clean and augmented copies) and the
    default model's family probabilities, by path."""

    clean: dict[Path, np.ndarray]
    augmented: dict[Path, list[np.ndarray]]
    default_probs: dict[Path, np.ndarray]
    default_labels: tuple[str, ...]


def embed(dataset: Dataset, *, copies: int, seed: int, cache_dir: Path | None) -> Embedded:
    from streamclf.backends.runner import load_engine
    from streamclf.models.card import load_model_card
    from streamclf.train.augment import AugmentConfig, draw
    from streamclf.train.commands import BASE_MODEL
    from streamclf.train.features import EmbeddingCache, file_sha256

    base, default = load_model_card(BASE_MODEL), load_model_card(DEFAULT_MODEL)
    cache = EmbeddingCache(base, load_engine(base, kind="onnxruntime", max_batch=16),
                           root=cache_dir)  # fmt: skip
    config = AugmentConfig(copies=copies)
    # one draw per (file content, copy), the same in every split and whatever else the set
    # holds, so each copy is embedded once and stays cached as the collection grows
    jobs = [(item.path, None) for item in dataset.items]
    jobs += [
        (item.path, draw(np.random.default_rng([seed, int(file_sha256(item.path)[:12], 16), c]),
                         config))
        for item in dataset.items
        for c in range(copies)
    ]  # fmt: skip
    outputs = cache.get_many(jobs, description=f"{BASE_MODEL} + augmented copies")
    clean = {p: o.embedding for (p, aug), o in zip(jobs, outputs, strict=True) if aug is None}
    augmented: dict[Path, list[np.ndarray]] = defaultdict(list)
    for (path, aug), out in zip(jobs, outputs, strict=True):
        if aug is not None:
            augmented[path].append(out.embedding)
    default_cache = EmbeddingCache(
        default, load_engine(default, kind="onnxruntime", max_batch=16), root=cache_dir
    )
    paths = [item.path for item in dataset.items]
    probs = default_cache.get_many([(p, None) for p in paths], description=DEFAULT_MODEL)
    return Embedded(clean, augmented, {p: o.tags for p, o in zip(paths, probs, strict=True)},
                    default.labels)  # fmt: skip


def train_and_score(
    chosen: list[Item], held_out: list[Item], classes: tuple[str, ...], data: Embedded,
    config: TrainConfig,
) -> tuple[float, float]:  # fmt: skip
    """Train a head as `streamclf train` does on `chosen`; its accuracy on `held_out`."""
    import torch

    from streamclf.train.trainer import Track, train_head

    index = {c: i for i, c in enumerate(classes)}
    sides = group_split(chosen, shares={"train": 0.8, "val": 0.2}, seed=config.seed)
    train = [i for i in chosen if sides[i.group] == "train"]
    val = [i for i in chosen if sides[i.group] == "val"]
    if {i.label for i in train} != set(classes):  # a class all in validation: train on all
        train, val = chosen, []
    tracks = [Track(data.clean[i.path], index[i.label]) for i in train]
    tracks += [Track(e, index[i.label]) for i in train for e in data.augmented[i.path]]
    val_tracks = [Track(data.clean[i.path], index[i.label]) for i in val]
    result = train_head(tracks, val_tracks, n_classes=len(classes), config=config)
    probs = []
    with torch.no_grad():
        for item in held_out:
            x = torch.from_numpy(data.clean[item.path][:, None, :].astype(np.float32))
            probs.append(torch.softmax(result.head(x), dim=1).numpy())
    return accuracies(probs, [index[i.label] for i in held_out])


def default_score(held_out: list[Item], data: Embedded) -> tuple[float, float] | None:
    """The default's forced-choice accuracy on `held_out`; None if it cannot name a class."""
    if any(item.label not in data.default_labels for item in held_out):
        return None
    truth = [data.default_labels.index(item.label) for item in held_out]
    return accuracies([data.default_probs[item.path] for item in held_out], truth)


def learning_curve(
    dataset: Dataset, *, data: Embedded, steps: Sequence[str], repeats: int, test_share: float,
    config: TrainConfig,
) -> dict:  # fmt: skip
    """Every split's scores per step, the default's on the same held-out tracks, and notes."""
    classes = dataset.classes
    rows: dict[str, dict[str, list[float]]] = {s: defaultdict(list) for s in steps}
    default: dict[str, list[float]] = defaultdict(list)
    notes: list[str] = []
    for split in range(repeats):
        sides = group_split(dataset.items, shares={"train": 1 - test_share, "test": test_share},
                            seed=split)  # fmt: skip
        train = [i for i in dataset.items if sides[i.group] == "train"]
        held_out = [i for i in dataset.items if sides[i.group] == "test"]
        absent = sorted(set(classes) - {i.label for i in held_out})
        seen = sum(i.split == "train" for i in held_out)
        notes.append(
            f"split {split}: {len(train)} training tracks, {len(held_out)} held out"
            + (f" (no held-out {', '.join(absent)})" if absent else "")
            + (f"; {seen} held-out tracks are in the dataset's own calib/train split, on which the "
               "shipped default was calibrated" if seen else "")
        )  # fmt: skip
        if {i.label for i in train} != set(classes):
            missing = sorted(set(classes) - {i.label for i in train})
            notes.append(f"split {split}: no training track of {', '.join(missing)}: skipped")
            continue
        unseen = [i for i in held_out if i.split != "train"]
        for name, tracks in (("default", held_out), ("default_unseen", unseen)):
            score = default_score(tracks, data) if tracks else None
            if score is not None:
                default[f"{name}_windows"].append(score[0])
                default[f"{name}_tracks"].append(score[1])
        for step in steps:
            per_class = None if step == "all" else int(step)
            rng = np.random.default_rng([split, per_class or 0])
            chosen, short = pick_per_class(train, per_class=per_class, rng=rng)
            if short:
                have = ", ".join(f"{c} {n}" for c, n in short.items())
                notes.append(f"split {split}, {step} per class: too few training tracks ({have})")
                continue
            windows, tracks = train_and_score(
                chosen, held_out, classes, data, replace(config, seed=split)
            )
            rows[step]["windows"].append(windows)
            rows[step]["tracks"].append(tracks)
            rows[step]["train_tracks"].append(len(chosen))
            print(f"split {split}, {step} per class: windows {windows:.3f}, tracks {tracks:.3f}",
                  file=sys.stderr)  # fmt: skip
    return {"classes": list(classes), "steps": {s: dict(r) for s, r in rows.items()},
            "default": dict(default), "notes": notes}  # fmt: skip


def render(result: dict, *, repeats: int) -> str:
    lines = [
        "| training tracks per class | splits | accuracy, windows | accuracy, tracks |",
        "| --- | ---: | ---: | ---: |",
    ]
    for step, row in result["steps"].items():
        n = len(row.get("windows", []))
        label = step if step != "all" else (
            f"all ({min(row['train_tracks'])}–{max(row['train_tracks'])} in total)" if n else "all"
        )  # fmt: skip
        lines.append(f"| {label} | {n} of {repeats} | {mean_spread(row.get('windows', []))} | "
                     f"{mean_spread(row.get('tracks', []))} |")  # fmt: skip
    d = result["default"]
    rows = [("default", f"default `{DEFAULT_MODEL}` (none)")]
    if d.get("default_unseen_tracks", []) != d.get("default_tracks", []):
        rows.append(("default_unseen", "default, held-out tracks of the dataset's test split"))
    for key, label in rows:
        windows, tracks = d.get(f"{key}_windows", []), d.get(f"{key}_tracks", [])
        lines.append(f"| {label} | {len(windows)} of {repeats} | {mean_spread(windows)} | "
                     f"{mean_spread(tracks)} |")  # fmt: skip
    return "\n".join(lines + [""] + [f"- {note}" for note in result["notes"]])


def _load(args: argparse.Namespace) -> Dataset:
    if args.labels_from == "tags":
        from streamclf.train.library import check_library, load_genre_map, scan_library

        mapping = load_genre_map(args.genre_map) if args.genre_map else None
        scan = scan_library(args.dataset, mapping)
        check_library(scan, map_path=args.genre_map)
        return Dataset(source=Path(args.dataset), items=tuple(scan.items))
    return load_dataset(args.dataset)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="learning_curve.py",
        description="Accuracy on unseen artists with 5, 10, 20 and all tracks per class, beside "
        "the default model's, over several artist splits (mean ± SD (range)).",
    )
    parser.add_argument("dataset", type=Path, help="a dataset as `streamclf train` reads it")
    parser.add_argument("--labels-from", choices=["layout", "tags"], default="layout",
                        help="as for streamclf train: tags reads GENRE and ARTIST tags")
    parser.add_argument("--genre-map", type=Path, metavar="TOML",
                        help="as for streamclf train: genre names onto classes")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help="tracks per class, comma-separated, or 'all' (default 5,10,20,all)")
    parser.add_argument("--repeats", type=int, default=5, help="artist splits (default 5)")
    parser.add_argument("--test-share", type=float, default=0.3,
                        help="share of each class's tracks held out, by artist (default 0.3)")
    parser.add_argument("--augment", type=int, default=2, help="augmented copies (default 2)")
    parser.add_argument("--head", choices=["linear", "mlp", "attention"], default="mlp",
                        help="the head trained at every step (default mlp, as streamclf train)")
    parser.add_argument("--epochs", type=int, default=100, help="at most (default 100)")
    parser.add_argument("--cache-dir", type=Path, help="embedding cache directory")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every score here")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if not steps or any(s != "all" and not (s.isdigit() and int(s) > 0) for s in steps):
        parser.error(f"--steps: positive numbers or 'all', got {args.steps!r}")
    if args.repeats < 1 or not 0 < args.test_share < 1:
        parser.error("--repeats must be at least 1 and --test-share in (0, 1)")
    from streamclf.logs import configure_logging
    from streamclf.train.trainer import TrainConfig

    configure_logging("warning")  # stdout is the table
    config = TrainConfig(head=args.head, epochs=args.epochs)
    try:
        dataset = _load(args)
        data = embed(dataset, copies=args.augment, seed=0, cache_dir=args.cache_dir)
        result = learning_curve(dataset, data=data, steps=steps, repeats=args.repeats,
                                test_share=args.test_share, config=config)  # fmt: skip
    except StreamclfError as exc:
        print(f"learning_curve.py: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(render(result, repeats=args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
