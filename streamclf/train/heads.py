"""Classifier heads on frozen musicnn embeddings (torch modules).

Every head maps a sequence of window embeddings x [B, T, D] to class logits [B, C]:

- `linear`: logistic regression on the mean embedding;
- `mlp`: one hidden ReLU layer (with dropout while training) on the mean embedding;
- `attention`: attention pooling (Ilse et al., 2018) — each window gets a learned weight,
  softmax-normalised over the sequence, and the classifier sees the weighted mean of the
  windows' projections, so that a clip's telling moments count more than its intro.

Inputs are standardised with the training set's mean and spread, stored as buffers so the
exported graph carries them. The daemon classifies one window at a time (T = 1): pooling of
one window is that window, and the smoother integrates over time (docs/training.md).
"""

from __future__ import annotations

import torch
from torch import nn

HEADS = ("linear", "mlp", "attention")


class Standardize(nn.Module):
    """(x - mean) / std with fixed statistics from the training embeddings."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor) -> None:
        """x [N, D] training embeddings."""
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PooledHead(nn.Module):
    """Mean over windows, then a linear layer (hidden = 0) or a one-hidden-layer MLP."""

    def __init__(self, *, dim: int, n_classes: int, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = Standardize(dim)
        layers: list[nn.Module] = [nn.Linear(dim, n_classes)]
        if hidden:
            layers = [
                nn.Linear(dim, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, n_classes),
            ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] → logits [B, C]."""
        return self.net(self.norm(x.mean(dim=1)))


class AttentionHead(nn.Module):
    """Attention pooling over windows (no gating), then a linear classifier."""

    def __init__(self, *, dim: int, n_classes: int, hidden: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = Standardize(dim)
        self.value = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] → logits [B, C]."""
        # Linear layers on [B·T, …] so the export keeps them as named Gemm weights.
        flat = self.norm(x).flatten(0, 1)  # [B·T, D]
        v = torch.tanh(self.value(flat))  # [B·T, H]
        scores = self.score(v).reshape(x.shape[0], x.shape[1], 1)
        weights = torch.softmax(scores, dim=1)  # [B, T, 1]
        v = v.reshape(x.shape[0], x.shape[1], -1)  # [B, T, H]
        return self.classifier(self.dropout((weights * v).sum(dim=1)))


def build_head(kind: str, *, dim: int, n_classes: int, hidden: int, dropout: float) -> nn.Module:
    """A fresh head of `kind` (one of HEADS); hidden is ignored by `linear`."""
    if kind == "linear":
        return PooledHead(dim=dim, n_classes=n_classes)
    if kind == "mlp":
        return PooledHead(dim=dim, n_classes=n_classes, hidden=hidden, dropout=dropout)
    if kind == "attention":
        return AttentionHead(dim=dim, n_classes=n_classes, hidden=hidden, dropout=dropout)
    msg = f"unknown head {kind!r} (choose from {', '.join(HEADS)})"
    raise ValueError(msg)
