"""Datasets for `streamclf train`: class folders and CSVs, and splits that never leak a file or
an artist."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamclf.errors import ConfigError
from streamclf.train.datasets import Dataset, Item, assign_splits, group_split, load_dataset

GENRES_CSV = Path(__file__).resolve().parent.parent / "datasets" / "genres" / "manifest.csv"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


class TestLoad:
    """A folder of class folders or a CSV becomes items with sorted classes."""

    def test_class_folders(self, tmp_path: Path) -> None:
        for name in (
            "rock/a.wav",
            "rock/sub/b.flac",
            "jazz/c.ogg",
            "jazz/notes.txt",
            ".hidden/d.wav",
        ):
            _touch(tmp_path / name)
        ds = load_dataset(tmp_path)
        assert ds.classes == ("jazz", "rock")
        assert sorted(i.path.name for i in ds.items) == ["a.wav", "b.flac", "c.ogg"]
        assert all(i.split is None and i.artist is None for i in ds.items)

    def test_csv_relative_paths_aliases_and_extra_columns(self, tmp_path: Path) -> None:
        _touch(tmp_path / "clips" / "a.wav")
        _touch(tmp_path / "clips" / "b.wav")
        (tmp_path / "m.csv").write_text(
            "path,label,split,artist,notes\nclips/a.wav,rock,calib,X,hi\nclips/b.wav,jazz,Test,,\n"
        )
        ds = load_dataset(tmp_path / "m.csv")
        by_name = {i.path.name: i for i in ds.items}
        assert by_name["a.wav"].path == tmp_path / "clips" / "a.wav"
        assert (by_name["a.wav"].split, by_name["a.wav"].artist) == ("train", "X")
        assert (by_name["b.wav"].split, by_name["b.wav"].artist) == ("test", None)

    @pytest.mark.parametrize(
        ("body", "needle"),
        [
            ("path,label\nmissing.wav,rock\nb.wav,jazz\n", "missing"),
            ("path,label,split\nb.wav,rock,someday\n", "unknown split"),
            ("file,genre\nb.wav,rock\n", "header"),
            ("path,label\nb.wav,rock\n", "at least 2"),
            ("path,label\nb.wav,rock\nb.wav,jazz\n", "listed 2 times"),
        ],
    )
    def test_bad_csv_is_a_config_error(self, tmp_path: Path, body: str, needle: str) -> None:
        _touch(tmp_path / "b.wav")
        (tmp_path / "m.csv").write_text(body)
        with pytest.raises(ConfigError, match=needle):
            load_dataset(tmp_path / "m.csv")

    def test_neither_folder_nor_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="neither"):
            load_dataset(tmp_path / "nope")

    def test_the_shipped_genre_set_loads(self) -> None:
        ds = load_dataset(GENRES_CSV)
        assert len(ds.classes) >= 4
        assert {i.split for i in ds.items} == {"train", "test"}  # its "calib" is our train


def _items(spec: list[tuple[str, str | None]]) -> Dataset:
    return Dataset(
        source=Path("."),
        items=tuple(
            Item(path=Path(f"/f{k}.wav"), label=label, artist=artist)
            for k, (label, artist) in enumerate(spec)
        ),
    )


class TestSplits:
    """Splits are made of whole groups (artist, else file), per class, reproducibly."""

    @settings(max_examples=60, deadline=None)
    @given(
        spec=st.lists(
            st.tuples(st.sampled_from("abc"), st.one_of(st.none(), st.sampled_from("PQRSTU"))),
            min_size=2,
            max_size=40,
        ),
        seed=st.integers(0, 1000),
    )
    def test_no_artist_or_file_in_two_splits(self, spec, seed: int) -> None:
        ds = assign_splits(_items(spec), seed=seed)
        where = defaultdict(set)
        for item in ds.items:
            assert item.split in ("train", "val", "test")
            where[item.group].add(item.split)
        assert all(len(s) == 1 for s in where.values())

    def test_shares_per_class_with_one_file_per_group(self) -> None:
        ds = assign_splits(_items([("a", None)] * 10 + [("b", None)] * 20), seed=3)
        for label, n in (("a", 10), ("b", 20)):
            counts = [
                sum(i.label == label and i.split == s for i in ds.items)
                for s in ("train", "val", "test")
            ]
            assert counts == [round(0.6 * n), round(0.2 * n), round(0.2 * n)]

    def test_same_seed_same_split_other_seed_other_split(self) -> None:
        ds = _items([("a", None)] * 15 + [("b", None)] * 15)
        first, again = assign_splits(ds, seed=1), assign_splits(ds, seed=1)
        assert first == again
        assert any(assign_splits(ds, seed=s) != first for s in range(2, 6))

    def test_given_test_split_kept_and_val_carved_from_train(self) -> None:
        ds = load_dataset(GENRES_CSV)
        out = assign_splits(ds, val_share=0.25, seed=0)
        given = {i.path: i.split for i in ds.items}
        for item in out.items:
            assert (item.split == "test") == (given[item.path] == "test")
        assert any(i.split == "val" for i in out.items)

    def test_ignoring_given_splits_groups_by_artist(self) -> None:
        out = assign_splits(load_dataset(GENRES_CSV), use_given=False, seed=0)
        where = defaultdict(set)
        for item in out.items:
            where[item.artist].add(item.split)
        assert all(len(s) == 1 for s in where.values())

    def test_group_split_respects_shares_exactly_when_possible(self) -> None:
        items = _items([("a", None)] * 5).items
        result = group_split(items, shares={"train": 0.6, "test": 0.4}, seed=0)
        assert sorted(result.values()).count("test") == 2

    def test_bad_shares(self) -> None:
        with pytest.raises(ConfigError, match="shares"):
            assign_splits(_items([("a", None), ("b", None)]), val_share=0.6, test_share=0.5)
