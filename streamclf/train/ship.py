"""Which genres the default may publish, from its out-of-fold probabilities, and shipping it.

A family is published as a genre only where the cross-validation on unseen packages and
artists says it can be trusted: it is found in at least MIN_FAMILY_GROUPS independent groups,
and there is a threshold (0.05 steps) at which the windows it would be published for — the
best of all families, its probability at least the threshold — are right at least
TARGET_PRECISION of the time, over at least MIN_PUBLISHED windows, **and in every fold** that
publishes it MIN_FOLD_WINDOWS times or more: a soundtrack's style must not carry a family that
fails on another package. That threshold is the family's own (`calibration.genre_thresholds`):
a family that is right whenever it is named need not wait as long as one that is right only
when it is sure. Every other family stays among the model's outputs (in `top`, and as the
unknown's candidates) but is never the published `genre`.

How well the rule itself generalises is measured the same way (`nested`): thresholds chosen
without each fold, applied to it.

`ship` exports a head that won the comparison with this validation in its card;
`validate_card` writes the same validation into today's default card when nothing won, so the
default always says what it was measured to get right.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streamclf.evaluate import FUSED_MODEL, confusion_matrix, per_class_prf
from streamclf.models.taxonomy import FAMILIES
from streamclf.train.folds import Track, family_groups
from streamclf.train.maphead import MUSICNN, HeadSpec, Windows, clean, decide_among, fit_head

MIN_FAMILY_GROUPS = 2  # independent groups a family needs to be measured on unseen music at all
TARGET_PRECISION = 2 / 3  # a published genre is right at least 2 times in 3
MIN_PUBLISHED = 10  # windows (one 30 s track's worth) a precision is measured on, at the least
MIN_FOLD_WINDOWS = 5  # a fold publishing a family this often must find it right as often too
SINGLE_THRESHOLD = 0.35  # what the default published every family at before this rule
THRESHOLDS = np.round(np.arange(0.0, 0.95, 0.05), 2)


def shipping_rows(spec: HeadSpec, windows: Windows) -> np.ndarray:
    """The rows a shipped head is fitted on: every window, with the augmented copies only for
    a head trained on them."""
    rows = np.arange(len(windows.truth))
    return rows if spec.augmented else clean(windows, rows)


def per_family_f1(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Out-of-fold window F1 of each family present in `truth`, deciding among those."""
    present = np.bincount(truth, minlength=len(FAMILIES)) > 0
    f1 = per_class_prf(confusion_matrix(truth=truth, pred=decide_among(probs, present),
                                        n_classes=len(FAMILIES)))[2]
    return {f: round(float(f1[i]), 4) for i, f in enumerate(FAMILIES) if present[i]}


def _holds(right: np.ndarray, fold: np.ndarray) -> bool:
    """Right often enough overall and in each fold that publishes the family often."""
    if len(right) < MIN_PUBLISHED or right.mean() < TARGET_PRECISION:
        return False
    return all(right[fold == f].mean() >= TARGET_PRECISION for f in np.unique(fold)
               if (fold == f).sum() >= MIN_FOLD_WINDOWS)


def genre_thresholds(probs: np.ndarray, truth: np.ndarray, groups: dict[str, int],
                     fold: np.ndarray) -> dict[str, dict[str, float]]:
    """Per publishable family (`fold`: each window's fold): the smallest threshold at which its
    published windows hold (`_holds`), with the precision and recall reached there."""
    pred = probs.argmax(axis=1)  # the daemon decides among every family the model outputs
    confidence = probs[np.arange(len(pred)), pred]
    found = {}
    for index, family in enumerate(FAMILIES):
        if groups.get(family, 0) < MIN_FAMILY_GROUPS:
            continue
        for threshold in THRESHOLDS:
            published = (pred == index) & (confidence >= threshold)
            if published.sum() < MIN_PUBLISHED:
                break  # a higher threshold publishes fewer still
            right = truth[published] == index
            if _holds(right, fold[published]):
                found[family] = {"threshold": float(threshold),
                                 "precision": round(float(right.mean()), 4),
                                 "recall": round(int(right.sum()) / int((truth == index).sum()),
                                                 4)}
                break
    return found


def published_mask(probs: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """Which windows would be published as a genre (the best family, at its threshold)."""
    pred = probs.argmax(axis=1)
    limit = np.array([thresholds.get(f, np.inf) for f in FAMILIES])
    return probs[np.arange(len(pred)), pred] >= limit[pred]


def published_figures(probs: np.ndarray, truth: np.ndarray, published: np.ndarray) -> dict:
    """The share of windows published as a genre and how many of those were right, overall
    and per family."""
    pred = probs.argmax(axis=1)
    right = pred[published] == truth[published]
    per_family = {f: {"published": int((pred[published] == i).sum()),
                      "right": round(float(right[pred[published] == i].mean()), 4)}
                  for i, f in enumerate(FAMILIES) if (pred[published] == i).any()}
    return {"published_share": round(float(published.mean()), 4),
            "right": round(float(right.mean()), 4) if right.size else None,
            "per_family": per_family}


def nested_check(probs: np.ndarray, truth: np.ndarray, fold: np.ndarray,
                 tracks: Sequence[Track], track_fold: Sequence[int]) -> dict:
    """The rule judged on music it did not choose on: per fold, thresholds chosen on the other
    folds' windows and applied to this one's (`published_figures` of the result)."""
    published = np.zeros(len(truth), bool)
    for held in np.unique(fold):
        rest = fold != held
        groups = family_groups([t for t, f in zip(tracks, track_fold, strict=True) if f != held])
        chosen = genre_thresholds(probs[rest], truth[rest], groups, fold[rest])
        here = fold == held
        published[here] = published_mask(probs[here], {f: c["threshold"]
                                                       for f, c in chosen.items()})
    return published_figures(probs, truth, published)


def validation_of(result, windows: Windows, tracks: Sequence[Track], folds: Sequence[int], *,
                  summary: list[dict], compared_with: str) -> dict:
    """The card's `validation` block from a candidate's out-of-fold probabilities."""
    rows = clean(windows, np.arange(len(windows.truth)))
    probs, truth = result.oof[rows], windows.truth[rows]
    fold = np.asarray(folds)[windows.clip[rows]]
    groups = family_groups(tracks)
    published = genre_thresholds(probs, truth, groups, fold)
    return {
        "method": f"group {max(folds) + 1}-fold cross-validation over packages and artists on "
                  f"{len(tracks)} tracks (python -m streamclf.train.select --ship)",
        "rule": f"a family is published as a genre only if it is found in >= "
                f"{MIN_FAMILY_GROUPS} independent groups and, at its own threshold, its "
                f"published out-of-fold windows are right >= {TARGET_PRECISION:.2f} of the "
                f"time over >= {MIN_PUBLISHED} windows, and in each fold that publishes it "
                f">= {MIN_FOLD_WINDOWS} times",
        "validated_families": [f for f in FAMILIES if f in published],
        "published": published,
        "nested": nested_check(probs, truth, fold, tracks, folds),
        f"every_family_at_{SINGLE_THRESHOLD}": published_figures(
            probs, truth, published_mask(probs, dict.fromkeys(FAMILIES, SINGLE_THRESHOLD))),
        "groups_per_family": groups,
        "out_of_fold_window_f1": per_family_f1(probs, truth),
        "cross_validation": [s for s in summary if s["name"] in (result.name, compared_with)],
    }


def _with_validation(calibration: dict, validation: dict) -> dict:
    thresholds = {f: p["threshold"] for f, p in validation["published"].items()}
    return {**calibration, "genre_thresholds": thresholds}


def validate_card(result, windows: Windows, tracks: Sequence[Track], folds: Sequence[int], *,
                  out: Path, summary: list[dict]) -> dict:
    """Write `result`'s validation into the default card in `out` (its graph unchanged): the
    genres it publishes and each one's threshold."""
    path = out / f"{FUSED_MODEL}.json"
    document = json.loads(path.read_text())
    validation = validation_of(result, windows, tracks, folds, summary=summary,
                               compared_with=result.name)
    document["genres"] = validation["validated_families"]
    document["calibration"] = _with_validation(document["calibration"], validation)
    document["validation"] = validation
    staged = path.with_suffix(".json.new")
    staged.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(staged, path)
    return document


def ship(result, spec: HeadSpec, windows: Windows, tracks: Sequence[Track], folds: Sequence[int],
         *, strength: float, out: Path, dataset: Path, summary: list[dict],
         compared_with: str) -> dict:
    """Fit the winner on every track (with the pull `strength` chosen on all of them), export
    it with its card and rebuild the split graphs; the card lists the validated families."""
    from streamclf.train.fused import write_default
    from streamclf.train.split import split_models

    rows = shipping_rows(spec, windows)
    fitted = fit_head(spec, windows, rows, strength=strength)
    validation = validation_of(result, windows, tracks, folds, summary=summary,
                               compared_with=compared_with)

    def rounded(values: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(values, np.float64), 6).astype(np.float32)

    params = {"weight_mtt": rounded(fitted.weight[0]), "weight_msd": rounded(fitted.weight[1]),
              "bias": rounded(fitted.bias)}
    residual = None
    if spec.residual:
        residual = {"input": spec.residual, "weight": rounded(fitted.residual_weight),
                    "mean": rounded(fitted.mean), "scale": rounded(fitted.scale)}
    correction = f", plus a linear correction on the {spec.residual}" if spec.residual else ""
    calibration = _with_validation({
        "method": f"{result.name}: softmax of per-family weights on the two taggers' zero-shot "
                  f"family logits{correction} (docs/model-selection.md)",
        "fitted_on": f"{dataset.name}: {len(tracks)} tracks, {len(rows)} windows",
        "strength": None if spec.fixed else strength,
        "unknown_threshold": max(p["threshold"] for p in validation["published"].values())
        if validation["published"] else 0.9,
        **{key: value.tolist() for key, value in params.items()},
    }, validation)
    if residual:
        calibration["residual"] = {key: v if isinstance(v, str) else v.tolist()
                                   for key, v in residual.items()}
    with tempfile.TemporaryDirectory(dir=out) as staging:  # all or nothing lands in `out`
        staged = Path(staging)
        for part in MUSICNN:  # the split step rebuilds the fused graph from the parts beside it
            (staged / f"{part}.onnx").symlink_to((out / f"{part}.onnx").resolve())
        document = write_default(staged, params=params, calibration=calibration,
                                 residual=residual, genres=validation["validated_families"],
                                 validation=validation,
                                 trained_on=f"{dataset.name} (all tracks)",
                                 builder="python -m streamclf.train.select --ship")
        split_models([FUSED_MODEL], engines_dir=staged, out_dir=staged / "split")
        (out / "split").mkdir(exist_ok=True)
        for name in (f"{FUSED_MODEL}.onnx", f"{FUSED_MODEL}.json",
                     *(f"split/{FUSED_MODEL}{suffix}"
                       for suffix in (".frame.onnx", ".window.onnx", ".json"))):
            os.replace(staged / name, out / name)
    return document
