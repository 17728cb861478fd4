"""Genre-family heads on the taggers' zero-shot tag→family map, and the windows they fit on.

A head is a softmax over the genre families whose logits are

    z = Σ_taggers a_t ⊙ logit(zero-shot family score_t) + c + V · standardise(x)

with x the taggers' tag probabilities or embeddings. It starts at the zero-shot fusion (a = 1,
c = 0, V = 0) and pays λ·(|a − 1|² + |c|² + |V|²) for leaving it: a head pulled toward the map
keeps what the taggers learned from hundreds of thousands of tracks and cannot simply learn a
few soundtracks. `streamclf.train.select` compares and ships them; the fused default graph
(`streamclf.train.fused.FusedMusicnn`) computes the same logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from streamclf.backends.runner import load_engine
from streamclf.evaluate import Clip
from streamclf.models.card import dataset_of, load_model_card
from streamclf.models.taxonomy import FAMILIES, family_scores, logit, vocabulary_matrix
from streamclf.train.augment import AugmentConfig, draw
from streamclf.train.features import EmbeddingCache

MUSICNN = ("MTT_musicnn", "MSD_musicnn")

# -- the windows of a dataset, with every tagger's outputs --------------------------------------


@dataclass(frozen=True)
class Windows:
    """Per window: true family, owning clip, and each tagger's tags and embedding; windows of
    augmented copies of a clip are marked (they may train, never test)."""

    truth: np.ndarray  # int [N] index into FAMILIES
    clip: np.ndarray  # int [N] index into the clips
    tags: dict[str, np.ndarray]  # tagger → float32 [N, 50]
    embedding: dict[str, np.ndarray]  # tagger → float32 [N, D]
    augmented: np.ndarray | None = None  # bool [N]; None: no augmented copies
    _family_logits: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def family_logits(self, tagger: str) -> np.ndarray:
        """[N, F]: logit of the tagger's zero-shot family scores; 0 where it has no tag."""
        if tagger not in self._family_logits:
            mapping = vocabulary_matrix(dataset_of(tagger))
            scores = family_scores(tags=self.tags[tagger], mapping=mapping)
            self._family_logits[tagger] = logit(scores) * mapping.any(1)
        return self._family_logits[tagger]


def extract(clips: Sequence[Clip], taggers: Sequence[str], *, cache_dir: Path | None,
            copies: int = 0) -> Windows:
    """Every tagger over every clip's non-overlapping 3 s windows (cached on disk), and over
    `copies` augmented copies of each clip (gain, shift, noise, speed: streamclf.train.augment)."""
    rng = np.random.default_rng(0)
    jobs = [(i, None) for i in range(len(clips))]
    jobs += [(i, draw(rng, AugmentConfig())) for i in range(len(clips)) for _ in range(copies)]
    tags, embedding = {}, {}
    for name in taggers:
        card = load_model_card(name)
        cache = EmbeddingCache(card, load_engine(card, "onnxruntime", max_batch=16), root=cache_dir)
        outputs = cache.get_many([(clips[i].path, aug) for i, aug in jobs], description=name)
        tags[name] = np.concatenate([o.tags for o in outputs])
        embedding[name] = np.concatenate([o.embedding for o in outputs])
        counts = [len(o.tags) for o in outputs]
    owner = np.repeat([i for i, _ in jobs], counts)
    return Windows(truth=np.array([FAMILIES.index(clips[i].label) for i in owner]), clip=owner,
                   tags=tags, embedding=embedding,
                   augmented=np.repeat([aug is not None for _, aug in jobs], counts))


def clean(windows: Windows, rows: np.ndarray) -> np.ndarray:
    """The rows of original (not augmented) windows."""
    return rows if windows.augmented is None else rows[~windows.augmented[rows]]


# -- the heads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadSpec:
    """One candidate head: which taggers' family logits it starts from, what V sees."""

    taggers: tuple[str, ...]
    residual: str | None = None  # None, "tags" or "embedding"
    prior: bool = True  # False: a free logistic head on the residual features alone
    fixed: bool = False  # True: the zero-shot fusion itself (a = 1, c = 0), nothing fitted
    augmented: bool = False  # also train on the augmented copies of the training clips
    balanced: bool = True
    smoothing: float = 0.0


@dataclass
class FittedHead:
    """A fitted head's parameters (numpy), enough to predict and to export."""

    spec: HeadSpec
    weight: np.ndarray  # [T, F] per tagger, on its family logits
    bias: np.ndarray  # [F]
    residual_weight: np.ndarray | None = None  # [F, D]
    mean: np.ndarray | None = None  # [D]
    scale: np.ndarray | None = None  # [D]
    strength: float | None = None  # the λ chosen
    trained_families: np.ndarray = field(default_factory=lambda: np.ones(len(FAMILIES), bool))

    def logits(self, windows: Windows, rows: np.ndarray) -> np.ndarray:
        z = np.zeros((len(rows), len(FAMILIES))) + self.bias
        for t, name in enumerate(self.spec.taggers):
            z += self.weight[t] * windows.family_logits(name)[rows]
        if self.residual_weight is not None:
            x = (residual_features(windows, self.spec, rows) - self.mean) / self.scale
            z += x @ self.residual_weight.T
        return z


def head_from_calibration(calibration: dict) -> FittedHead:
    """The numpy head of a default model's card (the reference its graph is tested against)."""
    residual = calibration.get("residual")
    spec = HeadSpec(MUSICNN, residual["input"] if residual else None)
    weight = np.array([calibration["weight_mtt"], calibration["weight_msd"]], np.float64)
    if not residual:
        return FittedHead(spec, weight, np.asarray(calibration["bias"], np.float64))
    return FittedHead(spec, weight, np.asarray(calibration["bias"], np.float64),
                      *(np.asarray(residual[k], np.float64) for k in ("weight", "mean", "scale")))


def residual_features(windows: Windows, spec: HeadSpec, rows: np.ndarray) -> np.ndarray:
    """[n, D]: the taggers' tag probabilities or embeddings side by side (probabilities, not
    logits: a logit near 0 or 1 magnifies float differences between the full and split graphs)."""
    if spec.residual == "tags":
        return np.concatenate([windows.tags[t][rows] for t in spec.taggers], axis=1)
    return np.concatenate([windows.embedding[t][rows] for t in spec.taggers], axis=1)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fit_head(spec: HeadSpec, windows: Windows, rows: np.ndarray, *, strength: float) -> FittedHead:
    """Minimise the (balanced, smoothed) log-loss over the present families plus the pulls."""
    truth = windows.truth[rows]
    present = np.bincount(truth, minlength=len(FAMILIES)) > 0
    reach = np.stack([vocabulary_matrix(dataset_of(t)).any(1) for t in spec.taggers])
    if spec.fixed:
        return FittedHead(spec, reach.astype(np.float64), np.zeros(len(FAMILIES)),
                          trained_families=present)
    n_present = int(present.sum())
    target_index = torch.as_tensor(np.cumsum(present)[truth] - 1)
    counts = np.bincount(truth, minlength=len(FAMILIES)).astype(np.float64)
    w = 1.0 / counts[truth] if spec.balanced else np.ones(len(rows))
    sample_weight = torch.as_tensor(w / w.sum())
    fam = torch.as_tensor(np.stack([windows.family_logits(t)[rows] for t in spec.taggers]),
                          dtype=torch.float64)
    reach = torch.as_tensor(reach)
    keep = torch.as_tensor(present)
    use_map = spec.prior
    start = torch.where(reach, 1.0, 0.0).double() * float(use_map)
    params = [start.requires_grad_(use_map),
              torch.zeros(len(FAMILIES), dtype=torch.float64, requires_grad=True)]
    mean = scale = None
    if spec.residual:
        x = residual_features(windows, spec, rows).astype(np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        xs = torch.as_tensor((x - mean) / scale)
        correction = torch.zeros(len(FAMILIES), x.shape[1], dtype=torch.float64)
        params.append(correction.requires_grad_(True))
    trainable = [p for p in params if p.requires_grad]
    optimiser = torch.optim.LBFGS(trainable, max_iter=100, line_search_fn="strong_wolfe")
    target = torch.full((len(rows), n_present), spec.smoothing / n_present, dtype=torch.float64)
    target[torch.arange(len(rows)), target_index] += 1.0 - spec.smoothing

    def loss_fn() -> torch.Tensor:
        optimiser.zero_grad()
        a, c = params[0], params[1]
        z = (a[:, None, :] * fam).sum(0) + c
        if spec.residual:
            z = z + xs @ params[2].T
        logp = torch.log_softmax(z[:, keep], dim=1)
        loss = -(sample_weight[:, None] * target * logp).sum()
        if use_map:
            loss = loss + strength * (((a - 1.0) * reach)[:, keep] ** 2).sum()
        loss = loss + strength * (c[keep] ** 2).sum()
        if spec.residual:
            loss = loss + strength * (params[2][keep] ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(loss_fn)
    a, c = (p.detach().numpy().copy() for p in params[:2])
    for values in (a, c):
        values[..., ~present] = values[..., present].mean(axis=-1, keepdims=True)
    a = a * reach.numpy()
    residual = params[2].detach().numpy().copy() if spec.residual else None
    if residual is not None:
        residual[~present] = 0.0
    return FittedHead(spec, a, c, residual, mean, scale, strength, present)


def decide_among(probs: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    return np.where(allowed[None, :], probs, -np.inf).argmax(axis=1)
