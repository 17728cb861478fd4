"""The genre families the feed publishes, and how musicnn's tags map onto them (runtime, no torch).

Neither tagger alone names the genres people ask for: MTT has "classical" and "techno" but no
"jazz" or "metal"; MSD (Last.fm tags) has "jazz" and "metal" but no "classical". A family
collects the tags of both vocabularies that name it (docs/model-quality.md lists the table).

Zero-shot, a model's score for a family is the *largest* probability among its tags for that
family (tags are independent sigmoids: "hard rock" and "rock" are two votes for one family, not
two halves of it). A model with no tag for a family scores it 0 and can never call it. The fused
model calibrates these scores (`calibrated_probs`) into one distribution over the families.

Tags that name no family stay unmapped on purpose: instruments, voices, moods, decades, and the
styles outside this taxonomy (MTT "indian", "sitar"; MSD "experimental", "sexy", "catchy").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamclf.models.card import MSD_LABELS, MTT_LABELS

FAMILIES = (
    "rock", "metal", "punk", "pop", "electronic", "dance", "hip-hop", "rnb", "jazz", "blues",
    "country", "folk", "classical", "ambient",
)
# family → tags, per training vocabulary. "dance" is dance/techno/house; "rnb" is r&b, soul, funk.
MTT_FAMILY_TAGS: dict[str, tuple[str, ...]] = {
    "rock": ("rock",),
    "metal": ("metal",),
    "pop": ("pop",),
    "electronic": ("electronic",),
    "dance": ("techno", "dance"),
    "country": ("country",),
    "classical": ("classical", "classic", "opera", "choral", "harpsichord"),
    "ambient": ("ambient", "new age"),
}
MSD_FAMILY_TAGS: dict[str, tuple[str, ...]] = {
    "rock": ("rock", "alternative", "indie", "alternative rock", "classic rock", "indie rock",
             "hard rock", "Progressive rock"),
    "metal": ("metal", "heavy metal"),
    "punk": ("punk",),
    "pop": ("pop", "indie pop"),
    "electronic": ("electronic", "electronica", "electro"),
    "dance": ("dance", "House"),
    "hip-hop": ("Hip-Hop",),
    "rnb": ("soul", "rnb", "funk"),
    "jazz": ("jazz",),
    "blues": ("blues",),
    "country": ("country",),
    "folk": ("folk",),
    "ambient": ("ambient", "chillout", "chill"),
}
VOCABULARIES = {"MTT": (MTT_LABELS, MTT_FAMILY_TAGS), "MSD": (MSD_LABELS, MSD_FAMILY_TAGS)}
PROB_EPS = 1e-6  # scores are clipped to [eps, 1 - eps] before the logit


def mapping_matrix(*, labels: Sequence[str], family_tags: dict[str, tuple[str, ...]],
                   families: Sequence[str] = FAMILIES) -> np.ndarray:
    """float32 [n_families, n_labels]: 1 where a tag belongs to a family; unknown tags raise."""
    matrix = np.zeros((len(families), len(labels)), np.float32)
    for family, tags in family_tags.items():
        for tag in tags:
            if tag not in labels:
                msg = f"family {family!r} maps tag {tag!r} that the vocabulary lacks"
                raise ValueError(msg)
            matrix[families.index(family), labels.index(tag)] = 1.0
    return matrix


def vocabulary_matrix(dataset: str) -> np.ndarray:
    """The mapping matrix [14, 50] of 'MTT' or 'MSD'."""
    labels, family_tags = VOCABULARIES[dataset]
    return mapping_matrix(labels=labels, family_tags=family_tags)


def family_scores(*, tags: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Zero-shot family scores: tags [N, T] probabilities, mapping [F, T] 0/1 → [N, F].

    Score = max probability over the family's tags; 0 for a family without tags.
    """
    return (tags[:, None, :] * mapping[None, :, :]).max(axis=2)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
    return np.log(p) - np.log1p(-p)


def calibrated_probs(*, mtt_scores: np.ndarray, msd_scores: np.ndarray, weight_mtt: np.ndarray,
                     weight_msd: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The fused distribution [N, F] from both models' family scores [N, F].

    Per family f: z_f = weight_mtt[f]·logit(mtt_f) + weight_msd[f]·logit(msd_f) + bias[f], then a
    softmax over families (a per-class Platt scaling of two scores, normalised). This is the
    reference for the fused ONNX graph, which computes the same thing.
    """
    z = weight_mtt * logit(mtt_scores) + weight_msd * logit(msd_scores) + bias
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def zero_shot_family(scores: np.ndarray, *, mapping: np.ndarray) -> np.ndarray:
    """int [N]: the argmax family among those the model has tags for."""
    reachable = mapping.any(axis=1)
    return np.where(reachable[None, :], scores, -np.inf).argmax(axis=1)
