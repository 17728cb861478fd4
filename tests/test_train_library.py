"""`streamclf train LIBRARY --labels-from tags` on real tagged music, and the learning curve.

The library is made the way a station's looks: real clips of datasets/genres in one flat folder
(no class folders, so labels can only come from tags), tagged for real — Vorbis comments written
with mutagen, an MP3 whose ID3 tags and an M4A whose `©gen`/`©ART` atoms ffmpeg wrote while
encoding the same audio — beside the files a real library also holds: one that is not audio,
one without a GENRE tag, one with a genre the map does not name.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import REPO, assert_one_line_error, run_cli

from streamclf.audio.files import read_audio_file
from streamclf.errors import ConfigError
from streamclf.train.datasets import Item
from streamclf.train.library import genre_key, load_genre_map, read_file_tags

pytest.importorskip("mutagen")  # the train extra
pytestmark = pytest.mark.timeout(600)

CLIPS = REPO / "datasets" / "genres" / "clips"
CLIP_S = 12  # seconds of each clip: four windows are enough to learn and keep the test short
# (clip, GENRE as the station wrote it, ARTIST): three classes, each by at least two artists
TAGGED = [
    ("metal/fof-chaos_god.ogg", "Heavy Metal", "Muldjord"),
    ("metal/fof-armygeddon.ogg", "heavy  metal", "Muldjord"),
    ("metal/fof-metal_madness.ogg", "Metal", "Sectoid"),
    ("metal/fof-feelings.ogg", "Metal", "sectoid"),
    ("classical/wesnoth-battle.ogg", "Romantic Classical", "Aleksi Aubry-Carlson"),
    ("classical/wesnoth-breaking_the_chains.ogg", "Classical", "Mattias Westlund"),
    ("classical/wesnoth-casualties_of_war.ogg", "Classical", "Tyler Johnson"),
    ("electronic/nexuiz-brainsukker.ogg", "Electronica", "elysis"),
    ("electronic/nexuiz-infight.ogg", "Electronica", "elysis"),
]
MP3 = ("classical/wesnoth-elvish-theme.ogg", "Classical", "Doug Kaufman")  # ID3 via ffmpeg
M4A = ("electronic/nexuiz-digital_pursuit.ogg", "Electronica", "Parapraxis")  # MP4 atoms via ffmpeg
GENRE_MAP = """\
# the station's genre names onto its classes
"Heavy Metal" = "metal"
"Metal" = "metal"
"Romantic Classical" = "classical"
"Classical" = "classical"
"Electronica" = "electronic"
"""


def tag_vorbis(path: Path, *, genre: str | list[str] | None, artist: str) -> Path:
    from mutagen.oggvorbis import OggVorbis

    audio = OggVorbis(path)
    audio.delete()
    if genre is not None:
        audio["GENRE"] = genre
    audio["ARTIST"] = artist
    audio.save()
    return path


def encode(source: Path, out: Path, *, genre: str | None = None, artist: str | None = None) -> Path:
    """The first CLIP_S of `source`, encoded by ffmpeg, which writes any tags given in the
    container's own format (ID3 in MP3, atoms in M4A)."""
    codec = {".mp3": ["libmp3lame", "-q:a", "4"], ".m4a": ["aac"], ".ogg": ["libvorbis"]}
    tags = [f"{k}={v}" for k, v in (("genre", genre), ("artist", artist)) if v is not None]
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(source), "-t", str(CLIP_S),
         "-map_metadata", "-1", "-c:a", *codec[out.suffix],
         *(arg for tag in tags for arg in ("-metadata", tag)), str(out)],
        check=True, timeout=120,
    )  # fmt: skip
    return out


def vorbis_clip(
    clip: str, root: Path, *, genre: str | list[str] | None, artist: str, name: str = ""
) -> Path:
    """A clip of datasets/genres cut short, with Vorbis comments written by mutagen."""
    out = encode(CLIPS / clip, root / (name or Path(clip).name))
    return tag_vorbis(out, genre=genre, artist=artist)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (scripts/setup.sh installs it)")
    root = tmp_path_factory.mktemp("library") / "station"
    root.mkdir()
    for clip, genre, artist in TAGGED:
        vorbis_clip(clip, root, genre=genre, artist=artist)
    clip, genre, artist = MP3
    encode(CLIPS / clip, root / "elvish-theme.mp3", genre=genre, artist=artist)
    clip, genre, artist = M4A
    encode(CLIPS / clip, root / "neuronal.m4a", genre=genre, artist=artist)
    vorbis_clip("rock/hedgewars-rock.ogg", root, genre=None, artist="Station", name="jingle.ogg")
    vorbis_clip("ambient/flare-wind_ambient.ogg", root, genre="Polka", artist="Someone",
                name="polka.ogg")  # fmt: skip
    (root / "broken.ogg").write_bytes(b"not audio at all " * 100)
    (root / "notes.txt").write_text("not a music file, not counted")
    (root.parent / "map.toml").write_text(GENRE_MAP)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


class TestTags:
    """Every tag format is read through mutagen, from files another program tagged."""

    def test_vorbis_comment(self, library: Path) -> None:
        tags = read_file_tags(library / "fof-armygeddon.ogg")
        assert tags.genres == ("heavy metal",) and tags.artist == "Muldjord"
        assert CLIP_S - 1 < tags.length_s < CLIP_S + 1

    def test_id3_written_by_ffmpeg(self, library: Path) -> None:
        tags = read_file_tags(library / "elvish-theme.mp3")
        assert tags.genres == ("Classical",) and tags.artist == "Doug Kaufman"

    def test_mp4_atoms_written_by_ffmpeg(self, library: Path) -> None:
        tags = read_file_tags(library / "neuronal.m4a")
        assert tags.genres == ("Electronica",) and tags.artist == "Parapraxis"

    def test_m4a_audio_is_decoded_through_ffmpeg(self, library: Path) -> None:
        """libsndfile cannot read AAC; the ffmpeg fallback gives the same music back."""
        audio, rate = read_audio_file(library / "neuronal.m4a")
        original, original_rate = read_audio_file(CLIPS / M4A[0])
        assert rate == original_rate and abs(len(audio) - CLIP_S * rate) < 0.1 * rate
        a, b = audio.mean(axis=1)[rate : (CLIP_S - 2) * rate], original.mean(axis=1)
        lag = int(np.argmax(np.correlate(b[: (CLIP_S - 1) * rate], a[: rate // 2], "valid")))
        assert abs(lag - rate) < rate // 10  # only the encoder's priming delay
        assert np.corrcoef(a, b[lag : lag + len(a)])[0, 1] > 0.95

    def test_not_audio_is_unreadable(self, library: Path) -> None:
        from streamclf.errors import AudioInputError

        with pytest.raises(AudioInputError):
            read_file_tags(library / "broken.ogg")


class TestGenreMap:
    def test_case_and_whitespace_do_not_matter(self, tmp_path: Path) -> None:
        path = tmp_path / "map.toml"
        path.write_text('"Top  40" = "pop"\n"top 40" = "pop"\n')
        assert load_genre_map(path) == {"top 40": "pop"}
        assert genre_key("  Top\t40 ") == "top 40" and genre_key("Hip-Hop") != genre_key("Hip Hop")

    @pytest.mark.parametrize(
        ("text", "why"),
        [
            ('"Top 40" = pop\n', "not valid TOML"),
            ('"Top 40" = 3\n', "must map to a class name"),
            ('"Top 40" = "pop"\n"top 40" = "rock"\n', "maps to both"),
            ("", "maps no genre"),
        ],
    )
    def test_bad_maps_say_why(self, tmp_path: Path, text: str, why: str) -> None:
        path = tmp_path / "map.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=why):
            load_genre_map(path)


class TestScan:
    """Several GENRE values in one file: used when they agree on a class, listed when not."""

    def test_several_genres(self, tmp_path: Path) -> None:
        from streamclf.train.library import describe, scan_library

        vorbis_clip(TAGGED[0][0], tmp_path, genre=["Metal", "Heavy Metal"], artist="A")
        vorbis_clip(TAGGED[4][0], tmp_path, genre=["Classical", "Metal"], artist="B")
        scan = scan_library(tmp_path, load_genre_map_text(tmp_path, GENRE_MAP))
        assert [(i.path.name, i.label) for i in scan.items] == [("fof-chaos_god.ogg", "metal")]
        assert scan.ambiguous == [(tmp_path / "wesnoth-battle.ogg", ("classical", "metal"))]
        listed = "  skipped 1 with genres of several classes: wesnoth-battle.ogg (classical, metal)"
        assert listed in describe(scan)


def load_genre_map_text(folder: Path, text: str) -> dict[str, str]:
    (folder / "map.toml").write_text(text)
    return load_genre_map(folder / "map.toml")


@pytest.fixture(scope="module")
def trained(library: Path, cache: Path) -> tuple[Path, subprocess.CompletedProcess]:
    pytest.importorskip("torch")
    out = library.parent / "models" / "station.onnx"
    proc = run_cli(
        "train", str(library), "--labels-from", "tags", "--genre-map",
        str(library.parent / "map.toml"), "--out", str(out), "--head", "linear",
        "--epochs", "15", "--augment", "0", "--seed", "1", "--cache-dir", str(cache),
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    return out, proc


@pytest.mark.torch
class TestTrainFromTags:
    """The real command, from tags to a model and a score on artists it never heard."""

    def test_labels_come_from_every_tag_format(self, trained) -> None:
        out, _ = trained
        with out.with_suffix(".labels.csv").open() as f:
            rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
        assert {r["label"] for r in rows.values()} == {"metal", "classical", "electronic"}
        assert rows["elvish-theme.mp3"]["label"] == "classical"
        assert rows["neuronal.m4a"]["label"] == "electronic"
        assert rows["fof-armygeddon.ogg"]["label"] == "metal"  # "heavy  metal" as mapped
        # "Sectoid" and "sectoid" are one artist, so one group of the split
        assert rows["fof-feelings.ogg"]["artist"] == rows["fof-metal_madness.ogg"]["artist"]
        assert not {"jingle.ogg", "polka.ogg", "broken.ogg"} & set(rows)

    def test_what_was_skipped_is_listed_and_counted(self, trained) -> None:
        out, proc = trained
        err = proc.stderr.decode()
        assert "14 audio files, 11 used in 3 classes" in err
        assert "skipped 1 unreadable: broken.ogg" in err
        assert "skipped 1 without a GENRE tag: jingle.ogg" in err
        assert 'map does not name: "Polka" (1 file)' in err
        library = json.loads(out.with_suffix(".report.json").read_text())["library"]
        assert library["unmapped_genres"] == {"Polka": 1}
        assert [Path(p).name for p in library["unreadable"]] == ["broken.ogg"]

    def test_held_out_artists_are_unseen_and_scored(self, trained) -> None:
        from streamclf.models.card import load_model_card
        from streamclf.train.datasets import SplitOptions, split_dataset

        out, proc = trained
        card = load_model_card(out)
        splits = SplitOptions(**card.document["training"]["splits"])
        dataset = split_dataset(out.with_suffix(".labels.csv"), splits)
        artists = {s: {i.artist for i in dataset.split(s)} for s in ("train", "val", "test")}
        assert artists["test"] and not artists["test"] & (artists["train"] | artists["val"])
        report = json.loads(out.with_suffix(".report.json").read_text())
        unseen = report["unseen_artists"]
        assert unseen["files"] == len(dataset.split("test")) and unseen["seen_in_training"] == 0
        assert "by artists it never heard" in proc.stdout.decode()

    def test_evaluate_reads_the_labels_csv(self, trained, cache: Path) -> None:
        out, proc = trained
        assert f"next: streamclf evaluate {out} {out.with_suffix('.labels.csv')}" in (
            proc.stdout.decode()
        )
        again = run_cli("evaluate", str(out), str(out.with_suffix(".labels.csv")), "--json",
                        "--cache-dir", str(cache), timeout=300)  # fmt: skip
        assert again.returncode == 0, again.stderr.decode()
        assert json.loads(again.stdout)["seen_in_training"] == 0


def make_library(root: Path, rows: list[tuple[str, str | None, str]]) -> Path:
    root.mkdir()
    for clip, genre, artist in rows:
        vorbis_clip(clip, root, genre=genre, artist=artist)
    return root


class TestBadLibraries:
    """Each gets one line saying what is wrong and exit 2, before any audio is embedded."""

    def train(self, library: Path, *extra: str) -> str:
        return assert_one_line_error(
            run_cli("train", str(library), "--labels-from", "tags", *extra, timeout=120), 2
        )

    def test_empty_folder(self, tmp_path: Path) -> None:
        (tmp_path / "empty").mkdir()
        assert "holds no audio files" in self.train(tmp_path / "empty")

    def test_not_a_folder(self, tmp_path: Path) -> None:
        assert "is not a folder" in self.train(tmp_path / "missing")

    def test_no_genre_tags(self, tmp_path: Path) -> None:
        rows = [(clip, None, artist) for clip, _, artist in TAGGED[:3]]
        assert "has a GENRE tag" in self.train(make_library(tmp_path / "lib", rows))

    def test_only_one_class(self, tmp_path: Path) -> None:
        assert "only one class, Metal" in self.train(make_library(tmp_path / "lib", TAGGED[2:4]))

    def test_class_with_one_artist(self, tmp_path: Path) -> None:
        rows = TAGGED[:2] + TAGGED[4:6]
        line = self.train(make_library(tmp_path / "lib", rows))
        assert "class 'heavy metal' has music by only one artist (Muldjord)" in line

    def test_only_unreadable_files(self, tmp_path: Path) -> None:
        (tmp_path / "lib").mkdir()
        for name in ("a.ogg", "b.mp3"):
            (tmp_path / "lib" / name).write_bytes(b"\0" * 4000)
        assert "none of its 2 audio files could be read" in self.train(tmp_path / "lib")

    def test_bad_toml(self, library: Path, tmp_path: Path) -> None:
        (tmp_path / "map.toml").write_text('"Top 40" = pop\n')
        line = self.train(library, "--genre-map", str(tmp_path / "map.toml"))
        assert "is not valid TOML" in line

    def test_map_naming_none_of_the_genres(self, library: Path, tmp_path: Path) -> None:
        (tmp_path / "map.toml").write_text('"Top 40" = "pop"\n')
        line = self.train(library, "--genre-map", str(tmp_path / "map.toml"))
        assert "no file's genre is in the genre map" in line and '"Electronica" (3 files)' in line

    def test_genre_map_without_tags_mode(self, tmp_path: Path) -> None:
        (tmp_path / "map.toml").write_text('"Top 40" = "pop"\n')
        line = assert_one_line_error(run_cli(
            "train", str(REPO / "datasets" / "genres"), "--genre-map", str(tmp_path / "map.toml"),
            timeout=120,
        ), 2)  # fmt: skip
        assert "--labels-from tags" in line


class TestLearningCurve:
    """tools/learning_curve.py: pure parts, then one real run on the tagged library."""

    def test_a_class_short_of_a_step_is_reported_not_filled(self, rng) -> None:
        sys.path.insert(0, str(REPO / "tools"))
        from learning_curve import pick_per_class

        items = [Item(Path(f"{c}{k}"), c) for c, n in (("a", 4), ("b", 2)) for k in range(n)]
        chosen, short = pick_per_class(items, per_class=3, rng=rng)
        assert chosen == [] and short == {"b": 2}
        chosen, short = pick_per_class(items, per_class=2, rng=rng)
        assert short == {} and sorted(i.label for i in chosen) == ["a", "a", "b", "b"]
        assert len(set(chosen)) == 4

    def test_accuracies_per_window_and_track(self) -> None:
        sys.path.insert(0, str(REPO / "tools"))
        from learning_curve import accuracies

        probs = [np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]]), np.array([[0.3, 0.7]])]
        assert accuracies(probs, [0, 0]) == pytest.approx((2 / 4, 1 / 2))

    @pytest.mark.torch
    def test_runs_on_the_tagged_library(self, library: Path, cache: Path, trained) -> None:
        result = library.parent / "curve.json"
        proc = subprocess.run(
            [sys.executable, str(REPO / "tools" / "learning_curve.py"), str(library),
             "--labels-from", "tags", "--genre-map", str(library.parent / "map.toml"),
             "--steps", "2,4,all", "--repeats", "2", "--augment", "0", "--test-share", "0.34",
             "--head", "linear", "--epochs", "15",
             "--cache-dir", str(cache), "--json", str(result)],
            capture_output=True, timeout=600, check=False, cwd=REPO,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr.decode()
        doc = json.loads(result.read_text())
        # 4 metal, 4 classical, 4 electronic tracks: 4 per class never fits beside a held-out set
        assert doc["steps"]["4"] == {}
        assert any("4 per class: too few training tracks" in n for n in doc["notes"])
        assert len(doc["steps"]["all"]["tracks"]) == len(doc["default"]["default_tracks"]) == 2
        short_of_2 = [n for n in doc["notes"] if "2 per class: too few" in n]
        assert len(doc["steps"]["2"].get("tracks", [])) + len(short_of_2) == 2
        scores = [s for step in doc["steps"].values() for s in step.get("tracks", [])]
        assert all(0 <= s <= 1 for s in scores + doc["default"]["default_tracks"])
        assert "| default `fused_musicnn` (none) | 2 of 2 |" in proc.stdout.decode()
