"""Choose the default genre head by group cross-validation on unseen packages and artists.

    python -m streamclf.train.select DATASET [--k 5] [--vgg] [--augment N] [--json OUT]
                                     [--ship ENGINES]

The taggers' outputs (50 MTT + 50 MSD tags and the 200-d penultimate embeddings of each,
optionally the VGG pair's) are computed once per clip with the real ONNX models and cached
(`streamclf.train.features.EmbeddingCache`); every candidate is then fitted on the training
folds and scored on the held-out fold, on the same folds (`streamclf.train.folds`).

Candidates are softmax heads over the genre families (`streamclf.train.maphead`):

- the zero-shot taggers alone (MTT, MSD) and their zero-shot fusion (a = 1, c = 0, no V);
- today's fused calibration (`streamclf.train.fused.fit_calibration`: a, c fitted, no V);
- heads pulled toward the tag→family map: start at the zero-shot fusion and pay
  λ·(|a − 1|² + |c|² + |V|²) for leaving it; λ is chosen inside the training folds (an inner
  group k-fold), never on the held-out fold; optionally also trained on augmented copies;
- a free logistic head on the embeddings (no map), and ensembles (mean of probabilities).

Each fit minimises the class-balanced log-loss over the families present in its training
folds (with optional label smoothing); a family the training folds lack keeps the mean a, c
and V = 0 there. Decisions are the argmax over the families of the training folds (what a
model fitted on them can publish). Per window (3 s) the macro-F1 and accuracy; per track the
argmax of an aggregate of the track's windows (mean of probabilities, mean of log-probabilities,
or the majority of window decisions).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamclf.errors import StreamclfError
from streamclf.evaluate import Clip, confusion_matrix, load_manifest, macro_f1
from streamclf.models.card import dataset_of
from streamclf.models.taxonomy import FAMILIES, family_scores, vocabulary_matrix
from streamclf.train.folds import Track, family_groups, group_folds, link_groups
from streamclf.train.maphead import (
    MUSICNN,
    HeadSpec,
    Windows,
    clean,
    decide_among,
    extract,
    fit_head,
    softmax,
)
from streamclf.train.pooling import attention_pool, fit_attention
from streamclf.train.ship import ship, shipping_rows, validate_card

log = structlog.get_logger(__name__)

VGG = ("MTT_vgg", "MSD_vgg")
LAMBDAS = (1e-2, 1e-1, 1.0, 10.0)  # strengths of the pull toward the map, chosen inside the folds
INNER_K = 3
AGGREGATES = ("mean", "logmean", "vote", "attention")
ATTENTION_PULL = 0.1  # attention pooling's pull toward the plain mean (streamclf.train.pooling)
TODAY = "today's fused calibration"


def choose_strength(spec: HeadSpec, windows: Windows, tracks: Sequence[Track],
                    rows: np.ndarray) -> float:
    """The λ of LAMBDAS with the best inner group-CV macro-F1 on `rows` (ties: the stronger)."""
    if spec.fixed:
        return float("inf")
    clips = np.unique(windows.clip[rows])
    inner_tracks = [tracks[i] for i in clips]
    k = min(INNER_K, len(set(link_groups(inner_tracks))))
    if k < 2:
        return LAMBDAS[-1]  # one group: nothing to validate on, stay near the map
    inner = dict(zip(clips, group_folds(inner_tracks, k=k), strict=True))
    fold_of_row = np.array([inner[c] for c in windows.clip[rows]])
    best = (-1.0, 0.0)
    for strength in LAMBDAS:
        f1s = []
        for fold in range(k):
            fit_rows = rows[fold_of_row != fold]
            test_rows = clean(windows, rows[fold_of_row == fold])
            head = fit_head(spec, windows, fit_rows, strength=strength)
            pred = decide_among(softmax(head.logits(windows, test_rows)), head.trained_families)
            f1s.append(macro_f1(confusion_matrix(truth=windows.truth[test_rows], pred=pred,
                                                 n_classes=len(FAMILIES))))
        best = max(best, (float(np.mean(f1s)), strength))
    return best[1]


# -- candidates and the cross-validation -----------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A name and how it turns training rows into a predictor of family probabilities."""

    name: str
    fit: Callable[[Windows, Sequence[Track], np.ndarray], Callable[[np.ndarray], np.ndarray]]
    taggers: tuple[str, ...] = MUSICNN
    spec: HeadSpec | None = None  # a head the default graph can carry (musicnn taggers only)
    parts: tuple[str, ...] = ()  # an ensemble's members, fitted before it in each fold


def zero_shot(tagger: str) -> Candidate:
    def fit(windows, tracks, rows):
        reach = vocabulary_matrix(dataset_of(tagger)).any(1)
        mapping = vocabulary_matrix(dataset_of(tagger))
        scores = family_scores(tags=windows.tags[tagger], mapping=mapping)
        return lambda test: np.where(reach, scores[test], 0.0)
    return Candidate(f"{tagger} zero-shot", fit, (tagger,))


def fixed_fusion(taggers: tuple[str, ...]) -> Candidate:
    return head(f"zero-shot fusion ({' + '.join(taggers)})", HeadSpec(taggers, fixed=True))


def todays_calibration() -> Candidate:
    from streamclf.models.taxonomy import calibrated_probs
    from streamclf.train.fused import fit_calibration

    def fit(windows, tracks, rows):
        scores = {t: family_scores(tags=windows.tags[t], mapping=vocabulary_matrix(dataset_of(t)))
                  for t in MUSICNN}
        params = fit_calibration(mtt_scores=scores["MTT_musicnn"][rows],
                                 msd_scores=scores["MSD_musicnn"][rows], truth=windows.truth[rows])
        return lambda test: calibrated_probs(mtt_scores=scores["MTT_musicnn"][test],
                                             msd_scores=scores["MSD_musicnn"][test], **params)
    return Candidate(TODAY, fit)


def head(name: str, spec: HeadSpec) -> Candidate:
    def fit(windows, tracks, rows):
        if spec.augmented and windows.augmented is not None:  # every copy of the training clips
            rows = np.flatnonzero(np.isin(windows.clip, windows.clip[rows]))
        strength = choose_strength(spec, windows, tracks, rows)
        fitted = fit_head(spec, windows, rows, strength=strength)
        return lambda test: softmax(fitted.logits(windows, test))
    return Candidate(name, fit, spec.taggers, spec if spec.taggers == MUSICNN else None)


def ensemble(name: str, parts: Sequence[Candidate]) -> Candidate:
    """The mean of the parts' probabilities. Fitted on the same rows as its parts, so within a
    fold the parts' own fits are reused (`cross_validate` passes them in `fitted`)."""
    def fit(windows, tracks, rows, fitted=None):
        fitted = fitted or {}
        predictors = [fitted.get(p.name) or p.fit(windows, tracks, rows) for p in parts]
        return lambda test: np.mean([p(test) for p in predictors], axis=0)
    return Candidate(name, fit, tuple(dict.fromkeys(t for p in parts for t in p.taggers)),
                     parts=tuple(p.name for p in parts))


def candidates(*, vgg: bool, augmented: bool = False) -> list[Candidate]:
    tags_head = head("tags head → map", HeadSpec(MUSICNN, "tags"))
    emb_head = head("embedding head → map", HeadSpec(MUSICNN, "embedding"))
    map_head = head("map head (a, c pulled toward the map)", HeadSpec(MUSICNN))
    found = [
        zero_shot("MTT_musicnn"), zero_shot("MSD_musicnn"), fixed_fusion(MUSICNN),
        todays_calibration(), tags_head, emb_head, map_head,
        head("embedding head, free", HeadSpec(MUSICNN, "embedding", prior=False)),
        head("tags head → map, unbalanced", HeadSpec(MUSICNN, "tags", balanced=False)),
        head("tags head → map, label smoothing 0.1", HeadSpec(MUSICNN, "tags", smoothing=0.1)),
        ensemble("ensemble: zero-shot fusion + tags head", [fixed_fusion(MUSICNN), tags_head]),
        ensemble("ensemble: tags head + embedding head", [tags_head, emb_head]),
        ensemble("ensemble: zero-shot fusion + map head", [fixed_fusion(MUSICNN), map_head]),
    ]
    if augmented:
        found += [head("map head, augmented", HeadSpec(MUSICNN, augmented=True)),
                  head("tags head → map, augmented", HeadSpec(MUSICNN, "tags", augmented=True)),
                  head("embedding head → map, augmented",
                       HeadSpec(MUSICNN, "embedding", augmented=True))]
    if vgg:
        both = MUSICNN + VGG
        found += [zero_shot("MTT_vgg"), zero_shot("MSD_vgg"), fixed_fusion(both),
                  head("tags head → map, + VGG", HeadSpec(both, "tags"))]
    return found


def aggregate(probs: np.ndarray, owners: np.ndarray, allowed: np.ndarray, how: str) -> tuple:
    """Per track (sorted owner ids): the argmax of the mean, log-mean or the vote of windows
    (attention pooling: `attention_pool`, fitted per fold in `cross_validate`)."""
    ids = np.unique(owners)
    preds = []
    for i in ids:
        p = probs[owners == i]
        if how == "mean":
            score = p.mean(axis=0)
        elif how == "logmean":
            score = np.log(np.clip(p, 1e-9, None)).mean(axis=0)
        else:
            score = np.bincount(decide_among(p, allowed), minlength=len(FAMILIES)).astype(float)
        preds.append(decide_among(score[None, :], allowed)[0])
    return ids, np.array(preds)


def attention_features(windows: Windows, train_rows: np.ndarray) -> np.ndarray:
    """[N, 28]: both taggers' zero-shot family logits, standardised on the training rows."""
    x = np.concatenate([windows.family_logits(t) for t in MUSICNN], axis=1)
    return (x - x[train_rows].mean(axis=0)) / (x[train_rows].std(axis=0) + 1e-6)


def attended_tracks(predict: Callable[[np.ndarray], np.ndarray], windows: Windows,
                    train_rows: np.ndarray, test_rows: np.ndarray, allowed: np.ndarray) -> tuple:
    """Per held-out track (sorted ids): the decision of attention pooling fitted on the
    candidate's own window probabilities of the training tracks."""
    features = attention_features(windows, train_rows)
    u = fit_attention(predict(train_rows), features[train_rows], windows.clip[train_rows],
                      windows.truth[train_rows], strength=ATTENTION_PULL)
    ids, pooled = attention_pool(predict(test_rows), features[test_rows],
                                 windows.clip[test_rows], u)
    return ids, decide_among(pooled, allowed)


@dataclass
class Result:
    """One candidate's figures per fold, and its out-of-fold probabilities."""

    name: str
    window_f1: list[float] = field(default_factory=list)
    window_acc: list[float] = field(default_factory=list)
    track_acc: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in AGGREGATES})
    oof: np.ndarray | None = None

    def summary(self) -> dict:
        def ms(values):
            return {"mean": float(np.mean(values)), "sd": float(np.std(values)),
                    "folds": [round(float(v), 4) for v in values]}
        return {"name": self.name, "window_macro_f1": ms(self.window_f1),
                "window_accuracy": ms(self.window_acc),
                "track_accuracy": {a: ms(v) for a, v in self.track_acc.items()}}


def beats(result: Result, other: Result) -> bool:
    """Higher mean window macro-F1, and better on more folds than worse: with a spread of
    ±0.2 over folds, a higher mean alone can be one lucky fold."""
    diff = np.subtract(result.window_f1, other.window_f1)
    return bool(diff.mean() > 0 and (diff > 0).sum() > (diff < 0).sum())


def cross_validate(windows: Windows, tracks: Sequence[Track], folds: Sequence[int],
                   chosen: Sequence[Candidate]) -> list[Result]:
    """Fit every candidate on k − 1 folds and score it on the held-out one, fold by fold."""
    fold_of_row = np.asarray(folds)[windows.clip]
    k = max(folds) + 1
    results = [Result(c.name, oof=np.zeros((len(windows.truth), len(FAMILIES)))) for c in chosen]
    progress = Progress(TextColumn("cross-validating"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("fits"), TimeElapsedColumn(), console=Console(stderr=True),
                        transient=True, disable=not sys.stderr.isatty())
    with progress:
        task = progress.add_task("cv", total=k * len(chosen))
        for fold in range(k):
            train_rows = clean(windows, np.flatnonzero(fold_of_row != fold))
            test_rows = clean(windows, np.flatnonzero(fold_of_row == fold))
            allowed = np.bincount(windows.truth[train_rows], minlength=len(FAMILIES)) > 0
            truth = windows.truth[test_rows]
            fitted = {}
            for candidate, result in zip(chosen, results, strict=True):
                if candidate.parts:
                    predict = candidate.fit(windows, tracks, train_rows, fitted)
                else:
                    predict = candidate.fit(windows, tracks, train_rows)
                fitted[candidate.name] = predict
                probs = predict(test_rows)
                result.oof[test_rows] = probs
                pred = decide_among(probs, allowed)
                cm = confusion_matrix(truth=truth, pred=pred, n_classes=len(FAMILIES))
                result.window_f1.append(macro_f1(cm))
                log.info("fold_scored", fold=fold, candidate=candidate.name,
                         window_macro_f1=round(result.window_f1[-1], 3))
                result.window_acc.append(float((pred == truth).mean()))
                for how in AGGREGATES:
                    if how == "attention":
                        ids, track_pred = attended_tracks(predict, windows, train_rows, test_rows,
                                                          allowed)
                    else:
                        ids, track_pred = aggregate(probs, windows.clip[test_rows], allowed, how)
                    track_truth = np.array([FAMILIES.index(tracks[i].family) for i in ids])
                    result.track_acc[how].append(float((track_pred == track_truth).mean()))
                progress.advance(task)
    return results


def render(results: Sequence[Result], baseline: str) -> str:
    """Markdown: mean ± sd over folds, and on how many folds a candidate beats `baseline`."""
    base = next(r for r in results if r.name == baseline)
    header = ("| candidate | window macro-F1 | window accuracy | track accuracy (mean) | "
              "track accuracy (log-mean) | track accuracy (vote) | track accuracy (attention) | "
              "folds > today's |")
    lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(results, key=lambda r: -np.mean(r.window_f1)):
        wins = sum(a > b for a, b in zip(r.window_f1, base.window_f1, strict=True))
        cells = [r.window_f1, r.window_acc, *r.track_acc.values()]
        figures = " | ".join(f"{np.mean(v):.3f} ± {np.std(v):.3f}" for v in cells)
        lines.append(f"| {r.name} | {figures} | {wins}/{len(r.window_f1)} |")
    return "\n".join(lines)


def tracks_of(clips: Sequence[Clip]) -> list[Track]:
    return [Track(c.extra.get("id") or str(c.path), c.label, c.extra.get("package", ""), c.artist)
            for c in clips]


def ship_winner(results: Sequence[Result], chosen: Sequence[Candidate], windows: Windows,
                tracks: Sequence[Track], folds: Sequence[int], *, args: argparse.Namespace,
                summary: list[dict]) -> None:
    """Ship the best head if it beats today's calibration and its split graphs pass; else write
    today's validation into its card, so the default publishes only what it gets right."""
    shippable = [(r, c.spec) for r, c in zip(results, chosen, strict=True) if c.spec]
    best, spec = max(shippable, key=lambda rs: np.mean(rs[0].window_f1))
    today = next(r for r in results if r.name == TODAY)
    if beats(best, today):
        strength = choose_strength(spec, windows, tracks, shipping_rows(spec, windows))
        try:
            document = ship(best, spec, windows, tracks, folds, strength=strength,
                            out=args.ship, dataset=args.dataset, summary=summary,
                            compared_with=TODAY)
        except StreamclfError as exc:  # e.g. split graphs that drift from the full one
            print(f"\nnot shipped ({best.name}): {exc}")
        else:
            print(f"\nshipped {best.name} to {args.ship}: publishes {_published(document)}")
            return
    else:
        print(f"\nnot shipped: the best head ({best.name}) does not beat {TODAY} (higher mean "
              "macro-F1 and better on more folds than worse)")
    document = validate_card(today, windows, tracks, folds, out=args.ship, summary=summary)
    print(f"{TODAY} stays, and now publishes {_published(document)}")


def _published(document: dict) -> str:
    thresholds = document["calibration"]["genre_thresholds"]
    return ", ".join(f"{g} (>= {t:.2f})" for g, t in thresholds.items()) or "no genre"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamclf.train.select",
        description="Compare genre heads by group k-fold cross-validation over packages and "
                    "artists (docs/model-selection.md); optionally ship the winner.")
    parser.add_argument("dataset", type=Path,
                        help="folder with manifest.csv (path,label,artist,package,…)")
    parser.add_argument("--k", type=int, default=5, help="folds (default 5)")
    parser.add_argument("--vgg", action="store_true", help="also the VGG pair (slower)")
    parser.add_argument("--augment", type=int, default=0, metavar="N",
                        help="also heads trained on N augmented copies of each training clip")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="tagger outputs cache (default ~/.cache/streamclf/embeddings)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--ship", type=Path, default=None, metavar="ENGINES",
                        help="export the best head there as fused_musicnn (with its split "
                             "graphs) if it beats today's calibration: a higher mean window "
                             "macro-F1 and more folds won than lost")
    args = parser.parse_args(argv)
    try:
        clips = load_manifest(args.dataset)
        tracks = tracks_of(clips)
        folds = group_folds(tracks, k=args.k)
        chosen = candidates(vgg=args.vgg, augmented=args.augment > 0)
        taggers = tuple(dict.fromkeys(t for c in chosen for t in c.taggers))
        windows = extract(clips, taggers, cache_dir=args.cache_dir, copies=args.augment)
    except (StreamclfError, ValueError) as exc:
        parser.exit(2, f"streamclf: {exc}\n")
    torch.set_num_threads(1)  # small full-batch fits: threads only contend on a shared machine
    results = cross_validate(windows, tracks, folds, chosen)
    groups = family_groups(tracks)
    print(f"{args.dataset}: {len(clips)} tracks, "
          f"{len(clean(windows, np.arange(len(windows.truth))))} windows, "
          f"{len(set(folds))} folds; independent groups per family: "
          + ", ".join(f"{f} {n}" for f, n in groups.items()) + "\n")
    print(render(results, "today's fused calibration"))
    summary = [r.summary() for r in results]
    if args.json:
        args.json.write_text(json.dumps({
            "dataset": str(args.dataset), "tracks": len(clips),
            "windows": len(clean(windows, np.arange(len(windows.truth)))),
            "k": args.k, "groups_per_family": groups,
            "folds": {t.id: f for t, f in zip(tracks, folds, strict=True)},
            "results": summary}, indent=1) + "\n")
    if args.ship:
        ship_winner(results, chosen, windows, tracks, folds, args=args, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
