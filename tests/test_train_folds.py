"""Group k-fold over packages and artists: no package and no artist on both sides of a fold."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamclf.evaluate import load_manifest
from streamclf.train.folds import Track, family_groups, group_folds, link_groups

GENRES = Path(__file__).resolve().parent.parent / "datasets" / "genres"


@st.composite
def manifests(draw) -> list[Track]:
    """Random manifests: few packages and artists, so that links across them are common."""
    n = draw(st.integers(min_value=4, max_value=40))
    packages = st.sampled_from(["", *(f"pkg{i}" for i in range(8))])
    artists = st.sampled_from(["", *(f"artist{i}" for i in range(10))])
    families = st.sampled_from(["rock", "jazz", "metal", "ambient"])
    return [Track(id=f"t{i}", family=draw(families), package=draw(packages), artist=draw(artists))
            for i in range(n)]


def sides_share_nothing(tracks: list[Track], folds: list[int], held_out: int) -> bool:
    test = [t for t, f in zip(tracks, folds, strict=True) if f == held_out]
    train = [t for t, f in zip(tracks, folds, strict=True) if f != held_out]
    for key in ("package", "artist"):
        test_keys = {getattr(t, key) for t in test} - {""}
        if test_keys & {getattr(t, key) for t in train}:
            return False
    return True


class TestGroupFolds:
    """Folds keep linked tracks together, are deterministic and use every fold."""

    @settings(max_examples=200, deadline=None)
    @given(tracks=manifests(), k=st.integers(min_value=2, max_value=5))
    def test_no_package_or_artist_on_both_sides(self, tracks, k):
        if len(set(link_groups(tracks))) < k:
            with pytest.raises(ValueError, match="cannot fill"):
                group_folds(tracks, k=k)
            return
        folds = group_folds(tracks, k=k)
        assert set(folds) == set(range(k)), "every fold holds some tracks"
        for held_out in range(k):
            assert sides_share_nothing(tracks, folds, held_out)

    @settings(max_examples=50, deadline=None)
    @given(tracks=manifests(), seed=st.randoms())
    def test_manifest_order_does_not_matter(self, tracks, seed):
        if len(set(link_groups(tracks))) < 2:
            return
        shuffled = list(tracks)
        seed.shuffle(shuffled)
        by_id = dict(zip([t.id for t in tracks], group_folds(tracks, k=2), strict=True))
        again = dict(zip([t.id for t in shuffled], group_folds(shuffled, k=2), strict=True))
        assert by_id == again

    def test_an_artist_links_two_packages(self):
        tracks = [Track("a", "rock", "p1", "x"), Track("b", "rock", "p2", "x"),
                  Track("c", "jazz", "p3", "y"), Track("d", "jazz", "", "")]
        assert link_groups(tracks) == [0, 0, 1, 2]
        assert family_groups(tracks) == {"jazz": 2, "rock": 1}

    def test_families_are_spread_over_folds(self):
        tracks = [Track(f"{fam}{i}", fam, f"{fam}-pkg{i}") for fam in ("rock", "jazz")
                  for i in range(4)]
        folds = group_folds(tracks, k=4)
        for fold in range(4):
            assert Counter(t.family for t, f in zip(tracks, folds, strict=True) if f == fold) == \
                {"rock": 1, "jazz": 1}

    def test_k_below_two_is_refused(self):
        with pytest.raises(ValueError, match="k >= 2"):
            group_folds([Track("a", "rock")], k=1)

    def test_shipped_set(self):
        clips = load_manifest(GENRES)
        tracks = [Track(c.extra["id"], c.label, c.extra["package"], c.artist) for c in clips]
        folds = group_folds(tracks, k=5)
        for held_out in range(5):
            assert sides_share_nothing(tracks, folds, held_out)
        # openclonk's one composer wrote ambient, classical, dance and rock: one group
        openclonk = {f for t, f in zip(tracks, folds, strict=True) if t.package == "openclonk-data"}
        assert len(openclonk) == 1
