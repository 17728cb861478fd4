"""Group k-fold cross-validation over packages and artists (pure Python, no torch).

A soundtrack's tracks share a composer, a mix and a style, so a model tested on another track
of a package it was fitted on is tested on what it has already heard. The groups here are the
connected components of "shares a package or an artist": no package and no artist is ever on
both sides of a fold, even when one artist wrote for two packages (and so links them).

Groups are dealt into k folds, largest first, each to the fold whose per-family counts stay
closest to an even share of every family (as far as the groups allow: a family found in two
groups can be tested in two folds only). The result depends only on the tracks, not on the
order of the manifest.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Track:
    """What the folds need of one clip: its family and the keys that tie it to other clips."""

    id: str
    family: str
    package: str = ""
    artist: str = ""


def link_groups(tracks: Sequence[Track]) -> list[int]:
    """Group index per track: connected components of 'same package or same artist'.

    An empty package or artist links nothing. Groups are numbered by their first track.
    """
    parent = list(range(len(tracks)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[tuple[str, str], int] = {}
    for i, track in enumerate(tracks):
        for key in (("package", track.package), ("artist", track.artist)):
            if not key[1]:
                continue
            j = first_with.setdefault(key, i)
            parent[root(i)] = root(j)
    numbering: dict[int, int] = {}
    return [numbering.setdefault(root(i), len(numbering)) for i in range(len(tracks))]


def _stable_key(ids: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()


def group_folds(tracks: Sequence[Track], *, k: int) -> list[int]:
    """Fold index (0 … k-1) per track; every group of `link_groups` lands in one fold.

    Deterministic: groups are ordered by size (largest first), ties by a hash of their track
    ids, and each goes to the fold that minimises the squared distance of the folds'
    per-family counts from an even split (ties: the fold with fewer tracks, then the lowest).
    """
    if k < 2:
        msg = f"k-fold needs k >= 2, not {k}"
        raise ValueError(msg)
    group_of = link_groups(tracks)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_of):
        members.setdefault(g, []).append(i)
    if len(members) < k:
        msg = f"{len(members)} independent groups (by package and artist) cannot fill {k} folds"
        raise ValueError(msg)
    totals = Counter(t.family for t in tracks)
    order = sorted(members.values(),
                   key=lambda m: (-len(m), _stable_key([tracks[i].id for i in m])))
    fold_counts = [Counter() for _ in range(k)]
    fold_sizes = [0] * k
    fold_of_group: dict[int, int] = {}

    def added_cost(counts: Counter, adds: Counter) -> Fraction:
        """Growth of Σ (count − total/k)² / total when `adds` joins a fold (exact: no float
        rounding may break the ties that keep empty folds filling first)."""
        return sum((Fraction(a) * (a + 2 * counts[f]) - Fraction(2 * a * totals[f], k)) / totals[f]
                   for f, a in adds.items())

    for group in order:
        adds = Counter(tracks[i].family for i in group)
        best = min(range(k), key=lambda f: (added_cost(fold_counts[f], adds), fold_sizes[f], f))
        fold_counts[best] += adds
        fold_sizes[best] += len(group)
        fold_of_group[group_of[group[0]]] = best
    return [fold_of_group[g] for g in group_of]


def family_groups(tracks: Sequence[Track]) -> dict[str, int]:
    """How many independent groups hold each family (what a cross-validated figure rests on)."""
    group_of = link_groups(tracks)
    return {f: len({g for t, g in zip(tracks, group_of, strict=True) if t.family == f})
            for f in sorted({t.family for t in tracks})}
