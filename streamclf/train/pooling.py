"""A track's decision from its windows: attention pooling (Ilse et al., 2018) over time.

Each window t of a track gets a score u · x_t from its own features (the standardised zero-shot
family logits of both taggers), softmax-normalised over the track's windows; the track's
distribution is the weighted mean of its windows' probabilities, so that telling moments can
count more than an intro. u starts at 0 (the plain mean) and pays `strength`·|u|² for leaving
it, fitted on the training tracks' class-balanced track log-loss. `streamclf.train.select`
scores it beside the mean, the log-mean and the vote (docs/model-selection.md).
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-9


def padded(values: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by owner: (sorted owner ids [K], values [K, L, …] zero-padded, mask [K, L])."""
    ids = np.unique(owners)
    groups = [np.flatnonzero(owners == i) for i in ids]
    length = max((len(g) for g in groups), default=0)
    out = np.zeros((len(ids), length, *values.shape[1:]), values.dtype)
    mask = np.zeros((len(ids), length), bool)
    for k, rows in enumerate(groups):
        out[k, :len(rows)], mask[k, :len(rows)] = values[rows], True
    return ids, out, mask


def fit_attention(probs: np.ndarray, features: np.ndarray, owners: np.ndarray,
                  truth: np.ndarray, *, strength: float) -> np.ndarray:
    """u [D] from windows' probabilities [N, F], features [N, D], owning track [N] and the true
    class of each window [N] (one per track): L-BFGS on the balanced track log-loss + pull."""
    _, p, mask = padded(probs.astype(np.float64), owners)
    _, x, _ = padded(features.astype(np.float64), owners)
    _, y, _ = padded(truth, owners)
    label = y[:, 0]
    counts = np.bincount(label, minlength=probs.shape[1]).astype(np.float64)
    weight = torch.as_tensor(1.0 / counts[label] / (counts > 0).sum())
    p, x, mask = torch.as_tensor(p), torch.as_tensor(x), torch.as_tensor(mask)
    rows = torch.arange(len(label))
    target = torch.as_tensor(label)
    u = torch.zeros(x.shape[2], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([u], max_iter=100, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        optimiser.zero_grad()
        attention = torch.softmax((x @ u).masked_fill(~mask, -torch.inf), dim=1)
        track = (attention[:, :, None] * p).sum(dim=1)[rows, target]
        loss = -(weight * torch.log(track + EPS)).sum() + strength * (u ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(loss_fn)
    return u.detach().numpy()


def attention_pool(probs: np.ndarray, features: np.ndarray, owners: np.ndarray,
                   u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted owner ids [K], pooled probabilities [K, F]): the attention-weighted mean."""
    ids, p, mask = padded(probs, owners)
    _, x, _ = padded(features, owners)
    scores = np.where(mask, x @ u, -np.inf)
    attention = np.exp(scores - scores.max(axis=1, keepdims=True))
    attention /= attention.sum(axis=1, keepdims=True)
    return ids, (attention[:, :, None] * p).sum(axis=1)
