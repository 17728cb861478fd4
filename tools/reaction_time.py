"""How fast the published genre follows an abrupt change of music, and what it says meanwhile.

Joins real clips of two different families end to end (the last 15 s of one, then the first
20 s of the other), runs each join through the daemon's own stages (LogMelFramer at the config's
hop, the incremental ONNX Runtime runner, Smoother) and measures, from the join:

- reaction: stream seconds until the published genre is first the new clip's family;
- wrong: whether a genre that is neither the old clip's nor the new clip's family was published
  in between ("unknown" and "silence" are allowed);
- old held: how long the old clip's genre was still published after the join;
- changes: how many genre changes the whole join published (1 or 2 is a clean change).

Only parts of clips that the model recognises on their own are joined (the mean of their 3 s
patches' genre probabilities picks their family, as `classify` sums up a track, at least at the
unknown threshold): the tool measures the smoothing, not the model's accuracy. Clips of a
family the model never publishes as a genre (not among its card's validated `genres`) are left
out: no reaction to them can happen.
The model runs once per join; every smoothing variant replays the same window probabilities.

    .venv/bin/python tools/reaction_time.py                      # the default config
    .venv/bin/python tools/reaction_time.py --pairs 60 \\
        --variant time_constant_s=2,min_dwell_s=1 --variant time_constant_s=1.5,min_dwell_s=1.5

Results: docs/live-genre.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamclf.backends.runner import load_runner
from streamclf.config import Config, SmoothingConfig, default_config, load_config
from streamclf.errors import ConfigError, StreamclfError
from streamclf.evaluate import load_manifest
from streamclf.features.framer import LogMelFramer, Window, load_mono_16k
from streamclf.features.mel import SAMPLE_RATE_HZ, WINDOW_FRAMES, frames_for_seconds
from streamclf.models.card import genre_vocabulary, load_model_card
from streamclf.smoothing import SILENCE, UNKNOWN, Smoother, card_thresholds

ALLOWED_BETWEEN = (UNKNOWN, SILENCE)
RUN_BATCH = 8  # windows per runner call, in stream order (the incremental runner needs order)
OLD_S = 15.0  # seconds of the old clip before the join: three default time constants, settled
NEW_S = 20.0  # seconds of the new clip: a reaction slower than that counts as "never"


@dataclass(frozen=True)
class Join:
    """One abrupt change: the model's window outputs over clip `old` followed by clip `new`."""

    old: str  # family of the first clip
    new: str  # family of the second clip
    name: str
    join_s: float  # stream time of the first sample of the new clip
    t_end_s: np.ndarray  # [n_windows]
    level_dbfs: np.ndarray  # [n_windows]
    tags: np.ndarray  # [n_windows, n_labels]


@dataclass(frozen=True)
class Reaction:
    reaction_s: float  # inf when the new genre was never published
    wrong: bool
    old_held_s: float  # 0 when the old genre was not published after the join
    changes: int


def measure(published: list[str], t_end_s: np.ndarray, *, join_s: float, old: str,
            new: str) -> Reaction:
    """Reaction of a published genre sequence (one per window, ending at `t_end_s`) to a join."""
    after = [(t - join_s, g) for t, g in zip(t_end_s, published, strict=True) if t > join_s]
    reaction_s = next((dt for dt, g in after if g == new), float("inf"))
    between = [g for dt, g in after if dt < reaction_s]
    wrong = any(g not in (old, new, *ALLOWED_BETWEEN) for g in between)
    old_held_s = max((dt for dt, g in after if g == old), default=0.0)
    changes = sum(a != b for a, b in itertools.pairwise(published))
    return Reaction(reaction_s, wrong, old_held_s, changes)


def replay(join: Join, smoothing: SmoothingConfig, *, labels: tuple[str, ...],
           families: tuple[str, ...], genres: tuple[str, ...],
           thresholds: dict[str, float]) -> list[str]:
    """The genre the daemon would publish for each window of `join` under `smoothing`: it
    decides among `families` and publishes `genres`, each at its threshold in `thresholds`."""
    smoother = Smoother(smoothing, labels=labels, genres=families, published=genres,
                        thresholds=thresholds)
    return [smoother.update(p, t, level).genre
            for p, t, level in zip(join.tags, join.t_end_s, join.level_dbfs, strict=True)]


def run_windows(runner, key: str, windows: list[Window]) -> np.ndarray:
    """Tag probabilities [n, n_labels] of one stream's windows, in order, then forget the stream."""
    out = [runner.run([(key, w) for w in windows[i:i + RUN_BATCH]])["tags"]
           for i in range(0, len(windows), RUN_BATCH)]
    runner.reset(key)
    return np.concatenate(out)


def frame(samples: np.ndarray, hop_frames: int) -> list[Window]:
    framer = LogMelFramer(window_frames=WINDOW_FRAMES, hop_frames=hop_frames)
    return [*framer.push(samples), *framer.flush()]


def recognised(tags: np.ndarray, index: list[int], families: tuple[str, ...], label: str,
               threshold: float) -> bool:
    """Whether the mean probabilities of a stretch of music name `label` as the best family,
    at least as surely as its threshold asks (else the daemon could never publish it)."""
    mean = tags.mean(axis=0)[index]
    best = int(np.argmax(mean))
    return families[best] == label and mean[best] >= threshold


def build_joins(config: Config, dataset: Path, *, pairs: int, seed: int, split: str | None
                ) -> tuple[list[Join], dict]:
    """Join the last OLD_S seconds of one clip to the first NEW_S of a clip of another family,
    for `pairs` random pairs of clips whose joined parts the model recognises alone."""
    card = load_model_card(config.engine.model)
    families, genres = genre_vocabulary(card, config.engine.genres)
    clips = [c for c in load_manifest(dataset) if split is None or c.split == split]
    unpublished = sorted({c.label for c in clips} - set(genres))  # never its genre: no reaction
    clips = [c for c in clips if c.label in genres]
    if not clips:
        msg = f"{card.name} publishes none of the families in {dataset} as a genre"
        raise ConfigError(msg)
    index = card.genre_indices(families)
    smoothing, thresholds = card_thresholds(config.smoothing, card)
    whole = load_runner(card, "onnxruntime", incremental=False, max_batch=RUN_BATCH)
    tails, heads = {}, {}
    olds, news = [], []
    for clip in clips:
        audio = load_mono_16k(clip.path)
        tails[clip.path] = audio[-int(OLD_S * SAMPLE_RATE_HZ):]
        heads[clip.path] = audio[:int(NEW_S * SAMPLE_RATE_HZ)]
        for part, chosen in ((tails, olds), (heads, news)):
            tags = run_windows(whole, "clip", frame(part[clip.path], WINDOW_FRAMES))
            threshold = thresholds.get(clip.label, smoothing.unknown_threshold)
            if recognised(tags, index, families, clip.label, threshold):
                chosen.append(clip)
    whole.close()
    candidates = [(a, b) for a in olds for b in news if a.label != b.label]
    rng = np.random.default_rng(seed)
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:pairs]]
    hop_frames = frames_for_seconds(config.framing.hop_s)
    runner = load_runner(card, "onnxruntime", incremental=config.engine.incremental,
                         hop_frames=hop_frames, max_batch=RUN_BATCH)
    joins = []
    for a, b in chosen:
        windows = frame(np.concatenate((tails[a.path], heads[b.path])), hop_frames)
        joins.append(Join(old=a.label, new=b.label, name=f"{a.path.stem} > {b.path.stem}",
                          join_s=len(tails[a.path]) / SAMPLE_RATE_HZ,
                          t_end_s=np.array([w.t_end_s for w in windows]),
                          level_dbfs=np.array([w.level_dbfs for w in windows]),
                          tags=run_windows(runner, "join", windows)))
    runner.close()
    about = {"model": card.name, "hop_s": config.framing.hop_s, "clips": len(clips),
             "recognised_old": len(olds), "recognised_new": len(news),
             "possible_pairs": len(candidates), "pairs": len(joins), "split": split or "all",
             "unpublished_families": unpublished,
             "seed": seed, "old_s": OLD_S, "new_s": NEW_S}
    return joins, about


def save_joins(path: Path, joins: list[Join], about: dict) -> None:
    """The model's window outputs of every join, so that other smoothings replay them."""
    arrays = {f"{k}_{i}": getattr(j, k) for i, j in enumerate(joins)
              for k in ("t_end_s", "level_dbfs", "tags")}
    names = [[j.old, j.new, j.name, j.join_s] for j in joins]
    np.savez_compressed(path, about=json.dumps({**about, "joins": names}), **arrays)


def load_joins(path: Path) -> tuple[list[Join], dict]:
    with np.load(path, allow_pickle=False) as data:
        about = json.loads(str(data["about"]))
        joins = [Join(old, new, name, join_s, *(data[f"{k}_{i}"] for k in
                                                ("t_end_s", "level_dbfs", "tags")))
                 for i, (old, new, name, join_s) in enumerate(about.pop("joins"))]
    return joins, about


def summarise(reactions: list[Reaction]) -> dict:
    """Median and 90th percentile of the reaction (a "never" counts as infinitely slow)."""
    times = np.array([r.reaction_s for r in reactions])
    median, p90 = np.quantile(times, [0.5, 0.9], method="inverted_cdf")
    return {"median_s": float(median), "p90_s": float(p90),
            "never": int(np.isinf(times).sum()), "wrong": sum(r.wrong for r in reactions),
            "old_held_median_s": float(np.median([r.old_held_s for r in reactions])),
            "changes_mean": float(np.mean([r.changes for r in reactions]))}


def parse_variant(text: str, base: SmoothingConfig) -> SmoothingConfig:
    """'time_constant_s=2,min_dwell_s=1' → base with those smoothing keys replaced."""
    fields = {f.name for f in dataclasses.fields(SmoothingConfig)}
    changes = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in fields:
            msg = f"--variant: {key!r} is not a smoothing key ({', '.join(sorted(fields))})"
            raise ConfigError(msg)
        try:
            changes[key] = float(value)
        except ValueError:
            msg = f"--variant: {key} needs a number, got {value!r}"
            raise ConfigError(msg) from None
    return dataclasses.replace(base, **changes)


def describe(smoothing: SmoothingConfig, thresholds: dict[str, float]) -> str:
    threshold = ("the card's per genre" if thresholds
                 else f"{smoothing.unknown_threshold:g}")
    return (f"tau {smoothing.time_constant_s:g} s, dwell {smoothing.min_dwell_s:g} s, "
            f"margin {smoothing.switch_margin:g}, threshold {threshold}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("datasets/genres"),
                        help="a folder with manifest.csv (default datasets/genres)")
    parser.add_argument("--config", type=Path, help="streamclf TOML config (default: built-in)")
    parser.add_argument("--split", help="only clips of this split (default: all)")
    parser.add_argument("--pairs", type=int, default=40, help="joins to measure (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=V[,KEY=V]",
                        help="a smoothing variant to measure beside the config's (repeatable)")
    parser.add_argument("--windows", type=Path, metavar="NPZ",
                        help="keep the model's window outputs here and reuse them when the file "
                             "exists (same dataset, pairs, seed and hop; smoothing may differ)")
    parser.add_argument("--json", action="store_true", help="JSON instead of a markdown table")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config) if args.config else default_config()
        card = load_model_card(config.engine.model)
        # unresolved: a variant that sets unknown_threshold sets it for every genre
        variants = [config.smoothing, *(parse_variant(v, config.smoothing) for v in args.variant)]
        if args.windows and args.windows.is_file():
            joins, about = load_joins(args.windows)
        else:
            joins, about = build_joins(config, args.dataset, pairs=args.pairs, seed=args.seed,
                                       split=args.split)
            if args.windows:
                save_joins(args.windows, joins, about)
        if not joins:
            msg = f"no two recognised clips of different families in {args.dataset}"
            raise ConfigError(msg)
    except StreamclfError as exc:
        print(f"reaction_time: error: {exc}", file=sys.stderr)
        return 2
    families, genres = genre_vocabulary(card, config.engine.genres)
    rows, resolved = [], []
    for variant in variants:
        smoothing, thresholds = card_thresholds(variant, card)
        resolved.append(smoothing)
        reactions = [measure(replay(j, smoothing, labels=card.labels, families=families,
                                    genres=genres, thresholds=thresholds),
                             j.t_end_s, join_s=j.join_s, old=j.old, new=j.new) for j in joins]
        rows.append({"smoothing": dataclasses.asdict(smoothing), "genre_thresholds": thresholds,
                     **summarise(reactions)})
    if args.json:
        json.dump({**about, "results": rows}, sys.stdout, indent=1)
        print()
        return 0
    print(f"{about['pairs']} joins (of {about['possible_pairs']} possible) of {about['clips']} "
          f"clips, split {about['split']}: recognised {about['recognised_old']} last "
          f"{about['old_s']:g} s and {about['recognised_new']} first {about['new_s']:g} s; "
          f"{about['model']}, hop {about['hop_s']:g} s; families it never publishes (left out): "
          f"{', '.join(about.get('unpublished_families', [])) or 'none'}\n")
    print("| smoothing | median reaction | p90 | never | wrong genre between | "
          "old genre held (median) | changes per join |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row, smoothing in zip(rows, resolved, strict=True):
        print(f"| {describe(smoothing, row['genre_thresholds'])} | {row['median_s']:.1f} s | "
              f"{row['p90_s']:.1f} s | "
              f"{row['never']} | {row['wrong']} | {row['old_held_median_s']:.1f} s | "
              f"{row['changes_mean']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
