"""Track boundaries from the audio: F-measure at ±3 s and decision delay on joined real tracks.

The clips of datasets/genres (30 s each) are put in a seeded random order per split and joined
three ways with ffmpeg: butt-joined (`cut`), with 3 s crossfades (`crossfade`), and with 2 s of
silence between them (`gap`). Each mix runs through the daemon's framer and runner (1 s hop);
`streamclf.boundaries.BoundaryDetector` then sees the embeddings window by window. The
threshold is chosen on the `calib` split (best mean F over the three joins) and reported on
`test` with that threshold:

    python tools/track_boundaries.py --cache /tmp/boundaries   # prints the table in docs/tracks.md

`--cache` keeps each mix's embeddings (.npz), so other `--context` / `--radius` values are scored
without running the model again.

A detected boundary is a hit when it lies within ±3 s of a true one (each true one hit at most
once); the delay is from the true boundary to the end of the window that decided it.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from streamclf.backends.runner import load_runner
from streamclf.boundaries import BoundaryDetector
from streamclf.features.framer import logmel_windows_for_file
from streamclf.features.mel import WINDOW_FRAMES, frames_for_seconds
from streamclf.logs import configure_logging
from streamclf.models.card import load_model_card

REPO = Path(__file__).resolve().parents[1]
GENRES = REPO / "datasets" / "genres"
TOLERANCE_S = 3.0
CROSSFADE_S = 3.0
GAP_S = 2.0
JOINS = ("cut", "crossfade", "gap")
THRESHOLDS = np.round(np.arange(0.05, 0.80, 0.01), 3)


def clips(split: str, seed: int) -> list[Path]:
    with open(GENRES / "manifest.csv", newline="") as f:
        paths = [GENRES / row["path"] for row in csv.DictReader(f) if row["split"] == split]
    return [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))]


def join(paths: list[Path], how: str, out: Path) -> np.ndarray:
    """Join the clips with ffmpeg into `out`; returns the true boundary times (s)."""
    lengths = [sf.info(p).duration for p in paths]
    inputs = [arg for p in paths for arg in ("-i", str(p))]
    n = len(paths)
    norm = "".join(f"[{i}:a]aformat=sample_rates=44100:channel_layouts=mono[a{i}];"
                   for i in range(n))
    if how == "crossfade":
        graph, last = norm, "a0"
        for i in range(1, n):
            graph += f"[{last}][a{i}]acrossfade=d={CROSSFADE_S}[x{i}];"
            last = f"x{i}"
        starts = np.cumsum([0.0, *lengths[:-1]]) - CROSSFADE_S * np.arange(n)
        truth = starts[1:] + CROSSFADE_S / 2
    elif how == "gap":
        silence = "".join(f"aevalsrc=0:d={GAP_S}:s=44100[s{i}];" for i in range(n - 1))
        order = "".join(f"[a{i}][s{i}]" for i in range(n - 1)) + f"[a{n - 1}]"
        graph, last = norm + silence + f"{order}concat=n={2 * n - 1}:v=0:a=1[x];", "x"
        starts = np.cumsum([0.0, *lengths[:-1]]) + GAP_S * np.arange(n)
        truth = starts[1:] - GAP_S / 2
    else:
        order = "".join(f"[a{i}]" for i in range(n))
        graph, last = norm + f"{order}concat=n={n}:v=0:a=1[x];", "x"
        truth = np.cumsum(lengths)[:-1]
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *inputs,
                    "-filter_complex", graph.rstrip(";"), "-map", f"[{last}]", str(out)],
                   check=True)
    return truth


def embeddings(path: Path, runner) -> tuple[np.ndarray, np.ndarray]:
    """Per window of the mix at a 1 s hop: (embedding [n, d], window end [n])."""
    windows = logmel_windows_for_file(path, window_frames=WINDOW_FRAMES,
                                      hop_frames=frames_for_seconds(1.0))
    chunks = [runner.run([("mix", w) for w in windows[i:i + 16]])["embedding"]
              for i in range(0, len(windows), 16)]
    runner.reset("mix")
    return np.concatenate(chunks), np.array([w.t_end_s for w in windows])


def detect(features: np.ndarray, ends: np.ndarray, **params) -> tuple[np.ndarray, np.ndarray]:
    """(boundary times, times they were decided) from the streaming detector."""
    detector = BoundaryDetector(**params)
    found, decided = [], []
    for embedding, end in zip(features, ends, strict=True):
        for t in detector.push(embedding, end):
            found.append(t)
            decided.append(end)
    return np.array(found), np.array(decided)


def score(found: np.ndarray, decided: np.ndarray, truth: np.ndarray) -> tuple[float, float, float,
                                                                            list[float]]:
    """(precision, recall, F, delays of the hits), each true boundary matched at most once."""
    free = list(truth)
    delays = []
    for t, when in zip(found, decided, strict=True):
        near = [b for b in free if abs(b - t) <= TOLERANCE_S]
        if near:
            best = min(near, key=lambda b: abs(b - t))
            free.remove(best)
            delays.append(when - best)
    hits = len(delays)
    precision = hits / len(found) if len(found) else 0.0
    recall = hits / len(truth)
    f = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f, delays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=6, help="windows on each side (default 6)")
    parser.add_argument("--radius", type=int, default=4, help="peak radius, windows (default 4)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--model", default="MSD_musicnn", help="default MSD_musicnn")
    parser.add_argument("--cache", type=Path, help="folder for the mixes' embeddings (.npz)")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    runner = load_runner(load_model_card(args.model), "onnxruntime", incremental=True,
                         hop_frames=frames_for_seconds(1.0), max_batch=16)
    mixes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("calib", "test"):
            paths = clips(split, args.seed)
            for how in JOINS:
                cached = args.cache / f"{args.model}-{args.seed}-{split}-{how}.npz" \
                    if args.cache else None
                if cached is not None and cached.exists():
                    with np.load(cached) as saved:
                        mixes[split, how] = (saved["features"], saved["ends"], saved["truth"])
                    continue
                out = Path(tmp) / f"{split}-{how}.wav"
                truth = join(paths, how, out)
                mixes[split, how] = (*embeddings(out, runner), truth)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    features, ends, _ = mixes[split, how]
                    np.savez(cached, features=features, ends=ends, truth=truth)
    params = {"context": args.context, "radius": args.radius}

    def mean_f(split: str, threshold: float) -> float:
        return float(np.mean([score(*detect(f, e, threshold=threshold, **params), t)[2]
                              for (s, _), (f, e, t) in mixes.items() if s == split]))

    threshold = max(THRESHOLDS, key=lambda th: mean_f("calib", th))
    print(f"{args.model}: context {args.context} windows, radius {args.radius}, "
          f"threshold {threshold} "
          f"(best mean F on calib), tolerance ±{TOLERANCE_S:.0f} s")
    print("| split | join | boundaries | found | precision | recall | F | delay median (max), s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (split, how), (features, ends, truth) in mixes.items():
        found, decided = detect(features, ends, threshold=threshold, **params)
        precision, recall, f, delays = score(found, decided, truth)
        delay = f"{np.median(delays):.1f} ({max(delays):.1f})" if delays else "-"
        print(f"| {split} | {how} | {len(truth)} | {len(found)} | {precision:.2f} | {recall:.2f} "
              f"| {f:.2f} | {delay} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
