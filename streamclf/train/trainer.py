"""Fit a head on cached window embeddings: class-balanced segments, early stopping, one seed.

A training example is a segment of `segment_windows` consecutive windows of one file (of its
clean or an augmented version), drawn so that every class is equally likely whatever its file
count. Validation scores single windows (T = 1), exactly what the daemon will run, and training
stops once the validation loss has not improved for `patience` epochs; the best epoch's
weights are kept. Everything random comes from `seed`, so a run can be repeated bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from torch import nn

from streamclf.train.heads import build_head

log = structlog.get_logger(__name__)

MIN_STEPS_PER_EPOCH = 8  # so that validation on a small dataset does not run after every step


@dataclass(frozen=True)
class TrainConfig:
    head: str = "mlp"
    hidden: int = 128
    dropout: float = 0.3
    segment_windows: int = 4
    epochs: int = 100
    patience: int = 10
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class Track:
    """The window embeddings [N, D] of one (possibly augmented) file and its class index."""

    embedding: np.ndarray
    label: int


@dataclass
class TrainResult:
    head: nn.Module
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def class_balanced_weights(labels: Sequence[int]) -> np.ndarray:
    """float64 [n]: sampling probability of each item, equal total mass per class."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()


def draw_segments(
    tracks: Sequence[Track], *, count: int, windows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`count` class-balanced segments: (x float32 [count, windows, D], y int64 [count]).

    A file shorter than `windows` is repeated to fill its segment.
    """
    picks = rng.choice(len(tracks), size=count, p=class_balanced_weights([t.label for t in tracks]))
    x = np.empty((count, windows, tracks[0].embedding.shape[1]), np.float32)
    for row, k in enumerate(picks):
        emb = tracks[k].embedding
        if len(emb) < windows:
            emb = np.resize(emb, (windows, emb.shape[1]))
        start = int(rng.integers(0, len(emb) - windows + 1))
        x[row] = emb[start : start + windows]
    return x, np.array([tracks[k].label for k in picks], np.int64)


def single_windows(tracks: Sequence[Track]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of `tracks` as its own sequence: (x [N, 1, D], y [N])."""
    x = np.concatenate([t.embedding for t in tracks])[:, None, :]
    y = np.concatenate([np.full(len(t.embedding), t.label) for t in tracks])
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(
        y.astype(np.int64)
    )


def train_head(
    train: Sequence[Track], val: Sequence[Track], *, n_classes: int, config: TrainConfig
) -> TrainResult:
    """Train a fresh head; without validation tracks it runs all `config.epochs` epochs."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    dim = train[0].embedding.shape[1]
    head = build_head(
        config.head, dim=dim, n_classes=n_classes, hidden=config.hidden, dropout=config.dropout
    )
    train_x, _ = single_windows(train)
    head.norm.fit(train_x[:, 0])
    val_x, val_y = single_windows(val) if val else (None, None)
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    total_windows = sum(len(t.embedding) for t in train)
    steps = max(MIN_STEPS_PER_EPOCH, total_windows // (config.segment_windows * config.batch_size))
    best_loss, best_epoch, best_state = np.inf, 0, None
    result = TrainResult(head=head, best_epoch=0, epochs_run=0)
    for epoch in range(1, config.epochs + 1):
        head.train()
        losses = []
        for _ in range(steps):
            x, y = draw_segments(
                train, count=config.batch_size, windows=config.segment_windows, rng=rng
            )
            loss = F.cross_entropy(head(torch.from_numpy(x)), torch.from_numpy(y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        record = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        result.epochs_run = epoch
        if val_x is None:
            result.history.append(record)
            continue
        head.eval()
        with torch.no_grad():
            logits = head(val_x)
        record["val_loss"] = float(F.cross_entropy(logits, val_y))
        record["val_accuracy"] = float((logits.argmax(dim=1) == val_y).float().mean())
        result.history.append(record)
        if record["val_loss"] < best_loss - 1e-4:
            best_loss, best_epoch = record["val_loss"], epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    if best_state is not None:
        head.load_state_dict(best_state)
    result.best_epoch = best_epoch or result.epochs_run
    head.eval()
    log.info(
        "head_trained",
        head=config.head,
        epochs=result.epochs_run,
        best_epoch=result.best_epoch,
        **{
            k: round(v, 4) for k, v in result.history[result.best_epoch - 1].items() if k != "epoch"
        },
    )
    return result
