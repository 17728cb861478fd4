"""Offline tagging of files through the very framer and engine code the daemon uses.

Output schema (v 1) in docs/classify.md: per window start, end, genre and top-k tags; per file a
summary (mean tag probabilities over the windows, top genre).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from streamclf.audio.files import AUDIO_SUFFIXES, audio_files
from streamclf.backends.runner import WindowRunner, load_runner
from streamclf.config import SmoothingConfig
from streamclf.errors import AudioInputError, ConfigError
from streamclf.features.framer import Window, stream_file_windows
from streamclf.features.mel import WINDOW_FRAMES, frames_for_seconds
from streamclf.models.card import DEFAULT_MODEL, ModelCard, genre_vocabulary, load_model_card
from streamclf.smoothing import card_thresholds

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
# One window per engine call: ONNX Runtime's arena holds the largest batch's activations (fused
# model: peak 154 MiB at 1, 328 MiB at 4, 690 MiB at 16 for the whole process), while its
# throughput on 2 cores is the same from batch 1 on (docs/benchmarks.md, section 2).
BATCH_WINDOWS = 1
# Windows a reader thread decodes, resamples and frames ahead of the engine: reading a 30 s clip
# took 0.08 s against the fused engine's 0.2 s, and now runs beside the engine's calls instead of
# between them (docs/benchmarks.md, the offline path).
READ_AHEAD_WINDOWS = 4
TAGGRAM_WIDTH_IN = 14.0  # the --plot picture: wide, one row of tags every TAGGRAM_ROW_IN inches
TAGGRAM_ROW_IN = 0.16  # 50 tags: 9.5 inches tall, still room for 9-point labels


@dataclass(frozen=True)
class FileTags:
    """The taggram of one file: tag probabilities per window, and the window times."""

    path: Path
    starts_s: np.ndarray  # [n_windows]
    ends_s: np.ndarray  # [n_windows]
    tags: np.ndarray  # [n_windows, n_labels]

    def summary(self) -> np.ndarray:
        """Mean tag probabilities over the file's windows."""
        return self.tags.mean(axis=0)


def _top(probs: np.ndarray, labels: list[str], k: int) -> list[list]:
    order = np.argsort(probs)[::-1][:k]
    return [[labels[i], round(float(probs[i]), 6)] for i in order]


def top_genre(probs: np.ndarray, card: ModelCard, genres: tuple[str, ...]) -> tuple[str, float]:
    """The genre of a probability vector: the highest-scoring tag of the genre vocabulary."""
    index = card.genre_indices(genres)
    best = index[int(np.argmax(probs[index]))]
    return card.labels[best], float(probs[best])


def read_ahead(windows: Iterator[Window], *, depth: int) -> Iterator[Window]:
    """`windows`, iterated by a reader thread up to `depth` ahead of the caller; what it raises
    is raised here, and a caller that stops early stops the reader (and its file) with it."""
    finished = object()
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def read() -> None:
        try:
            outcome: object = finished
            try:
                for window in windows:
                    if not hand_over(window):
                        return
            except Exception as exc:  # noqa: BLE001 — raised again in the caller's thread
                outcome = exc
            hand_over(outcome)
        finally:
            windows.close()

    reader = threading.Thread(target=read, name="classify-reader", daemon=True)
    reader.start()
    try:
        while (item := ready.get()) is not finished:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def tag_file(path: Path, runner: WindowRunner, *, window_frames: int,
             hop_frames: int) -> FileTags:
    """Stream the file through the framer and the engine, `runner.max_batch` windows at a time
    (read ahead by a thread): memory stays that of one block and a few windows, whatever the
    file's length."""
    windows = read_ahead(
        stream_file_windows(path, window_frames=window_frames, hop_frames=hop_frames),
        depth=READ_AHEAD_WINDOWS)
    starts, ends, chunks = [], [], []
    try:
        while batch := list(islice(windows, runner.max_batch)):
            chunks.append(runner.run([(str(path), w) for w in batch])["tags"])
            starts += [w.t_start_s for w in batch]
            ends += [w.t_end_s for w in batch]
    finally:
        windows.close()
        runner.reset(str(path))
    if not chunks:
        msg = f"{path}: shorter than one window ({window_frames} frames, about 3 s)"
        raise AudioInputError(msg)
    return FileTags(path=path, starts_s=np.array(starts), ends_s=np.array(ends),
                    tags=np.concatenate(chunks))


def audio_paths(paths: list[Path]) -> list[Path]:
    """The files to tag: a file as given, a folder's audio files (recursively, sorted)."""
    found = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        files = audio_files(path)
        if not files:
            msg = f"{path}: a folder with no audio files ({', '.join(AUDIO_SUFFIXES)})"
            raise AudioInputError(msg)
        found += files
    return found


def is_confident(genre: str, confidence: float, card: ModelCard,
                 published: tuple[str, ...]) -> bool:
    """Whether the live feed (default smoothing) would publish this genre at this probability:
    it is one the model may publish (its card's validated genres, or those chosen) and
    reaches its threshold."""
    smoothing, thresholds = card_thresholds(SmoothingConfig(), card)
    return (genre in published
            and confidence >= thresholds.get(genre, smoothing.unknown_threshold))


def to_json(result: FileTags, card: ModelCard, genres: tuple[str, ...], *, top_k: int,
            published: tuple[str, ...]) -> dict:
    """`genres`: what the decision picks among; `published`: those it may call confident."""
    summary = result.summary()
    genre, confidence = top_genre(summary, card, genres)
    return {
        "file": str(result.path),
        "windows": [
            {
                "start": round(float(start), 3),
                "end": round(float(end), 3),
                "genre": top_genre(probs, card, genres)[0],
                "top": _top(probs, card.labels, top_k),
            }
            for start, end, probs in zip(result.starts_s, result.ends_s, result.tags)
        ],
        "summary": {
            "windows": len(result.tags),
            "genre": genre,
            "confidence": round(confidence, 6),
            "confident": is_confident(genre, confidence, card, published),
            "top": _top(summary, card.labels, top_k),
        },
    }


def plot_taggram(result: FileTags, card: ModelCard, out: Path) -> None:
    """Draw tags × time as a picture (matplotlib is optional: the dev and train extras have it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        msg = "--plot needs matplotlib: pip install 'streamclf[dev]' or matplotlib"
        raise ConfigError(msg) from exc
    # wide and short, whatever the file's length: a timeline a person reads at a glance
    fig, ax = plt.subplots(figsize=(TAGGRAM_WIDTH_IN, 1.5 + TAGGRAM_ROW_IN * len(card.labels)))
    image = ax.imshow(result.tags.T, aspect="auto", interpolation="nearest", cmap="viridis",
                      vmin=0.0, vmax=1.0,
                      extent=(0.0, float(result.ends_s[-1]), len(card.labels) - 0.5, -0.5))
    ax.set_yticks(range(len(card.labels)), card.labels, fontsize=9)
    ax.set_xlabel("time (s)", fontsize=11)
    ax.set_title(f"{result.path.name} — {card.name}", fontsize=12)
    fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03).set_label("tag probability", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    log.info("taggram_written", path=str(out))
    print(f"streamclf: taggram written to {out}", file=sys.stderr)


def _plot_path(plot: Path, audio: Path, several: bool) -> Path:
    return plot.with_name(f"{plot.stem}-{audio.stem}{plot.suffix}") if several else plot


def _print_text(doc: dict, out) -> None:
    print(f"{doc['file']}", file=out)
    for w in doc["windows"]:
        tags = "  ".join(f"{tag} {p:.2f}" for tag, p in w["top"])
        print(f"  {w['start']:7.2f}–{w['end']:7.2f} s  {w['genre']:<12} {tags}", file=out)
    s = doc["summary"]
    tags = "  ".join(f"{tag} {p:.2f}" for tag, p in s["top"])
    unsure = "" if s["confident"] else " (unsure)"
    print(f"  track ({s['windows']} windows): {s['genre']} {s['confidence']:.2f}{unsure}"
          f"   {tags}",
          file=out)


def run(args) -> int:
    """`streamclf classify`: tag each file (a folder: its audio files) through one loaded engine,
    print text as each is done or one JSON document at the end; a file that cannot be read is
    one error line, the others are still tagged, and the exit code says some failed."""
    window_frames = frames_for_seconds(args.window)
    if window_frames != WINDOW_FRAMES:
        msg = f"--window: the models take 3 s windows ({WINDOW_FRAMES} frames), got {args.window} s"
        raise ConfigError(msg)
    hop_frames = frames_for_seconds(args.hop)
    if hop_frames < 1:
        msg = f"--hop: must be at least {1 / 62.5:.3f} s, got {args.hop}"
        raise ConfigError(msg)
    if args.top_k < 1:
        msg = f"--top-k: must be at least 1, got {args.top_k}"
        raise ConfigError(msg)
    card = load_model_card(args.model or DEFAULT_MODEL)
    chosen = tuple(g.strip() for g in args.genres.split(",") if g.strip()) if args.genres else ()
    families, genres = genre_vocabulary(card, chosen, key="--genres")
    files = audio_paths(args.files)
    runner = load_runner(card, args.engine or "auto", hop_frames=hop_frames,
                         max_batch=BATCH_WINDOWS, cpu_precision=args.cpu_precision or "fp32")
    docs, failed = [], 0
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("files"), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True,
                        disable=not sys.stderr.isatty())
    try:
        with progress:
            task = progress.add_task("", total=len(files))
            for path in files:
                progress.update(task, description=path.name)
                try:
                    result = tag_file(path, runner, window_frames=window_frames,
                                      hop_frames=hop_frames)
                except AudioInputError as exc:
                    failed += 1
                    print(f"streamclf: error: {exc}", file=sys.stderr)
                    continue
                finally:
                    progress.advance(task)
                doc = to_json(result, card, families, published=genres, top_k=args.top_k)
                if args.json:
                    docs.append(doc)
                else:
                    _print_text(doc, sys.stdout)
                if args.plot:
                    plot_taggram(result, card, _plot_path(args.plot, path, len(files) > 1))
    finally:
        runner.close()
    if args.json:
        json.dump({"v": SCHEMA_VERSION, "model": card.name, "engine": runner.info.name,
                   "window_s": args.window, "hop_s": args.hop, "files": docs}, sys.stdout)
        sys.stdout.write("\n")
    if failed and len(files) > 1:
        print(f"streamclf: {failed} of {len(files)} files could not be tagged", file=sys.stderr)
    return AudioInputError.exit_code if failed else 0
