"""Per-window outputs of a model over audio files, cached on disk.

Training a head only needs the frozen backbone's embeddings, which take nearly all the time to
compute; they are cached under `~/.cache/streamclf/embeddings/<sha256>.npz`, keyed by the
file's content, the model file's sha256, the window grid and the augmentation, so an edited
file, another model or another augmentation can never hit a stale entry. Each entry holds
both outputs of the model (`embedding` and `tags`), so the zero-shot baseline of a stock model
and the predictions of a custom one come from the same cache.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from streamclf.backends.base import Engine, run_batched
from streamclf.backends.runner import load_engine
from streamclf.errors import AudioInputError, ConfigError
from streamclf.features.framer import LogMelFramer, load_mono_16k
from streamclf.features.mel import N_MELS, WINDOW_FRAMES, frames_for_seconds
from streamclf.models.card import ModelCard
from streamclf.train.augment import Augmentation

log = structlog.get_logger(__name__)

CACHE_VERSION = 1
BATCH_WINDOWS = 16
SHA_PREFIX = 16  # hex digits of a file's sha256 recorded in the card (enough to spot reuse)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "streamclf" / "embeddings"


@dataclass(frozen=True)
class WindowOutputs:
    """A model's outputs for the windows of one (possibly augmented) file."""

    embedding: np.ndarray  # float32 [n_windows, D]
    tags: np.ndarray  # float32 [n_windows, n_labels]
    starts_s: np.ndarray  # float64 [n_windows]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def signal_windows(y: np.ndarray, *, hop_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """y float32 [n] at 16 kHz → (log-mel windows [N, 187, 96], start times [N]), as the daemon
    frames."""
    framer = LogMelFramer(WINDOW_FRAMES, hop_frames)
    windows = [*framer.push(y), *framer.flush()]
    if not windows:
        return np.empty((0, WINDOW_FRAMES, N_MELS), np.float32), np.empty(0)
    return np.stack([w.frames for w in windows]), np.array([w.t_start_s for w in windows])


def embedding_engine(card: ModelCard, kind: str | None) -> Engine:
    """The engine that fills the cache for `card`: `kind`, ONNX Runtime when not given."""
    return load_engine(card, kind=kind or "onnxruntime", max_batch=16)


def window_hop_frames(hop_s: float) -> int:
    """Frames between windows for `--hop` seconds (a card records it as `training.hop_s`)."""
    hop = frames_for_seconds(hop_s)
    if hop < 1:
        msg = f"--hop: must be at least {1 / 62.5:.3f} s, got {hop_s}"
        raise ConfigError(msg)
    return hop


class EmbeddingCache:
    """Runs one model over files (optionally augmented) and remembers the outputs on disk."""

    def __init__(
        self,
        card: ModelCard,
        engine: Engine,
        *,
        hop_frames: int = WINDOW_FRAMES,
        root: str | Path | None = None,
    ) -> None:
        self.card = card
        self.engine = engine
        self.hop_frames = hop_frames
        self.root = Path(root) if root is not None else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self._file_sha: dict[Path, str] = {}

    def key(self, path: Path, augmentation: Augmentation | None) -> str:
        if path not in self._file_sha:
            self._file_sha[path] = file_sha256(path)
        parts = (
            f"v{CACHE_VERSION}",
            self._file_sha[path],
            self.card.sha256,
            f"window={WINDOW_FRAMES}",
            f"hop={self.hop_frames}",
            augmentation.key if augmentation else "clean",
        )
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def get(self, path: Path, augmentation: Augmentation | None = None) -> WindowOutputs:
        """The model's outputs for every window of `path` (augmented first, if given)."""
        entry = self.root / f"{self.key(path, augmentation)}.npz"
        if entry.is_file():
            try:
                with np.load(entry) as data:
                    self.hits += 1
                    return WindowOutputs(data["embedding"], data["tags"], data["starts_s"])
            except (OSError, ValueError, KeyError):
                log.warning("embedding_cache_unreadable", entry=str(entry))
        self.misses += 1
        y = load_mono_16k(path)
        if augmentation is not None:
            y = augmentation.apply(y)
        frames, starts_s = signal_windows(y, hop_frames=self.hop_frames)
        if not len(frames):
            msg = f"{path}: shorter than one window ({WINDOW_FRAMES} frames, about 3 s)"
            raise AudioInputError(msg)
        out = run_batched(self.engine, list(frames))
        result = WindowOutputs(out["embedding"], out["tags"], starts_s)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, embedding=result.embedding, tags=result.tags, starts_s=starts_s)
        tmp.replace(entry)  # atomic: a crash never leaves half an entry behind
        return result

    def get_many(
        self, jobs: Sequence[tuple[Path, Augmentation | None]], *, description: str = "embedding"
    ) -> list[WindowOutputs]:
        """`get` for each (path, augmentation), with a progress bar on a terminal."""
        progress = Progress(
            TextColumn(description),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=not sys.stderr.isatty(),
        )
        results = []
        with progress:
            task = progress.add_task(description, total=len(jobs))
            for path, augmentation in jobs:
                results.append(self.get(path, augmentation))
                progress.advance(task)
        log.info(
            "embeddings_ready",
            model=self.card.name,
            files=len(jobs),
            cached=self.hits,
            computed=self.misses,
        )
        return results
