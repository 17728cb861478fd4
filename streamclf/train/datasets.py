"""Datasets of labelled audio files, and train/val/test splits that no window can leak across.

A dataset is a folder of class folders (`<genre>/<file>`, as GTZAN is laid out) or a CSV with
columns `path,label` and optionally `split` and `artist` (other columns are ignored; relative
paths are relative to the CSV). Splits are made per file, or per artist where the CSV names
one, so that all windows of a file — and all files of an artist — land in one split.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import structlog

from streamclf.audio.files import AUDIO_SUFFIXES
from streamclf.errors import ConfigError

log = structlog.get_logger(__name__)

SPLITS = ("train", "val", "test")
# What datasets call their splits; "calib" is the calibration (fitting) part of datasets/genres.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "calib": "train",
    "fit": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "eval": "test",
    "holdout": "test",
}


@dataclass(frozen=True)
class Item:
    """One labelled file; `split` is None until assigned, `artist` None when unknown."""

    path: Path
    label: str
    split: str | None = None
    artist: str | None = None

    @property
    def group(self) -> str:
        """What must stay within one split: the artist where known, else the file."""
        return f"artist:{self.artist}" if self.artist else f"file:{self.path}"


@dataclass(frozen=True)
class Dataset:
    """The items of a dataset and its classes (sorted, so class indices are reproducible)."""

    source: Path
    items: tuple[Item, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({item.label for item in self.items}))

    def split(self, name: str) -> list[Item]:
        return [item for item in self.items if item.split == name]


def _split_name(value: str, *, where: str) -> str | None:
    value = value.strip().lower()
    if not value:
        return None
    if value not in SPLIT_ALIASES:
        msg = f"{where}: unknown split {value!r} (use one of {', '.join(sorted(SPLIT_ALIASES))})"
        raise ConfigError(msg)
    return SPLIT_ALIASES[value]


def _read_csv(path: Path) -> list[Item]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        msg = f"cannot read dataset CSV {path}: {exc}"
        raise ConfigError(msg) from exc
    if not rows or not {"path", "label"} <= set(rows[0]):
        msg = f"dataset CSV {path} needs a header with at least 'path' and 'label'"
        raise ConfigError(msg)
    items = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        if not (row["path"] or "").strip() or not (row["label"] or "").strip():
            msg = f"{where}: empty path or label"
            raise ConfigError(msg)
        file = Path(row["path"].strip())
        items.append(
            Item(
                path=file if file.is_absolute() else path.parent / file,
                label=row["label"].strip(),
                split=_split_name(row.get("split") or "", where=where),
                artist=(row.get("artist") or "").strip() or None,
            )
        )
    return items


def _read_folder(root: Path) -> list[Item]:
    return [
        Item(path=file, label=folder.name)
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for file in sorted(folder.rglob("*"))
        if file.is_file() and file.suffix.lower() in AUDIO_SUFFIXES
    ]


MANIFEST_NAME = "manifest.csv"


def load_dataset(source: str | Path, *, min_classes: int = 2) -> Dataset:
    """Read a class-folder tree or a CSV; ConfigError if it is empty, missing or inconsistent.

    A folder holding a `manifest.csv` (as datasets/genres does) is read through its manifest.
    Training needs two classes; a held-out folder of one class can still be evaluated.
    """
    source = Path(source)
    if source.is_dir() and (source / MANIFEST_NAME).is_file():
        source = source / MANIFEST_NAME
    if source.is_dir():
        items = _read_folder(source)
    elif source.is_file():
        items = _read_csv(source)
    else:
        msg = f"dataset {source} is neither a folder of class folders nor a CSV file"
        raise ConfigError(msg)
    missing = [item.path for item in items if not item.path.is_file()]
    if missing:
        msg = f"dataset {source}: {len(missing)} file(s) missing, first {missing[0]}"
        raise ConfigError(msg)
    seen = Counter(item.path.resolve() for item in items)
    twice = [p for p, n in seen.items() if n > 1]
    if twice:
        msg = f"dataset {source}: {twice[0]} is listed {seen[twice[0]]} times"
        raise ConfigError(msg)
    dataset = Dataset(source=source, items=tuple(items))
    if len(dataset.classes) < min_classes:
        msg = f"dataset {source} has {len(dataset.classes)} class(es); training needs at least 2"
        raise ConfigError(msg)
    return dataset


def group_split(items: Sequence[Item], *, shares: dict[str, float], seed: int) -> dict[str, str]:
    """Assign whole groups (artists or files) to splits, stratified by class: {group: split}.

    Groups are visited in a seeded random order; each goes to the split whose per-class
    file counts fall furthest short of `shares` (fractions of each class, summing to 1), so that
    every class is spread over the splits as evenly as whole groups allow.
    """
    by_group: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_group[item.group].append(item)
    per_class = Counter(item.label for item in items)
    have: dict[tuple[str, str], int] = Counter()
    order = sorted(by_group)
    np.random.default_rng(seed).shuffle(order)
    names = list(shares)
    assignment = {}
    for group in order:
        labels = Counter(item.label for item in by_group[group])

        def need(split: str, labels: Counter = labels) -> float:
            return sum(
                n * (shares[split] - have[label, split] / per_class[label])
                for label, n in labels.items()
            )

        chosen = max(names, key=lambda s: (need(s), -names.index(s)))
        assignment[group] = chosen
        for label, n in labels.items():
            have[label, chosen] += n
    return assignment


def assign_splits(
    dataset: Dataset,
    *,
    val_share: float = 0.2,
    test_share: float = 0.2,
    seed: int = 0,
    use_given: bool = True,
) -> Dataset:
    """Give every item a split; splits named by the CSV are kept unless `use_given` is False.

    Items without a split are divided by group (artist, else file) into train/val/test; when
    the dataset names a test split but no validation split, validation is carved out of train.
    """
    if not 0 <= val_share < 1 or not 0 <= test_share < 1 or val_share + test_share >= 1:
        msg = f"split shares val={val_share} test={test_share} must be in [0, 1) and sum below 1"
        raise ConfigError(msg)
    items = [item if use_given else replace(item, split=None) for item in dataset.items]
    given = {item.split for item in items if item.split}
    pool = [item for item in items if item.split is None]
    shares = {"train": 1.0 - val_share - test_share, "val": val_share, "test": test_share}
    if given and "val" not in given and val_share > 0:
        pool += [item for item in items if item.split == "train"]
        shares = {"train": 1.0 - val_share, "val": val_share}
    elif "test" in given:
        shares = {"train": 1.0 - val_share, "val": val_share}
    free = set(pool)
    assignment = group_split(pool, shares=shares, seed=seed) if pool else {}
    refreshed = tuple(
        replace(item, split=assignment[item.group]) if item in free else item for item in items
    )
    result = Dataset(source=dataset.source, items=refreshed)
    warn_leaks(result)
    return result


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


def warn_leaks(dataset: Dataset) -> dict[str, list[str]]:
    """Artists found in more than one split (a leak the CSV's own split made); logged, returned."""
    splits: dict[str, set[str]] = defaultdict(set)
    for item in dataset.items:
        if item.artist:
            splits[item.artist].add(item.split or "?")
    leaks = {artist: sorted(s) for artist, s in splits.items() if len(s) > 1}
    if leaks:
        log.warning("artist_in_several_splits", artists=len(leaks), first=next(iter(leaks)))
    return leaks


def summary(dataset: Dataset) -> dict[str, dict[str, int]]:
    """{split: {class: files}} for logs and the model card."""
    table: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        counts = Counter(item.label for item in dataset.split(split))
        table[split] = {label: counts.get(label, 0) for label in dataset.classes}
    return table
