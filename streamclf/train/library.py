"""A station's own tagged library as a training set: GENRE tags give classes, ARTIST the groups.

`streamclf train LIBRARY --labels-from tags` reads every audio file's tags with mutagen (Vorbis
comments in Ogg and FLAC, ID3 in MP3, WAV and AIFF, atoms in MP4/M4A), maps each GENRE value
through an optional TOML table onto the station's classes, and writes the result as a dataset
CSV (path,label,artist) beside the model, so that training, its split by artist and a later
`streamclf evaluate` all read the same list. Nothing is guessed: genre names the table does not
map are listed with their file counts, and those files are left out; files that cannot be read,
that carry no GENRE tag, or whose genres map to two classes are listed, counted and left out.
"""

from __future__ import annotations

import csv
import json
import sys
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track

from streamclf.audio.files import AUDIO_SUFFIXES, audio_files
from streamclf.errors import AudioInputError, ConfigError
from streamclf.features.mel import WINDOW_FRAMES
from streamclf.train.datasets import Item

MIN_LENGTH_S = WINDOW_FRAMES * 0.016  # one window of 187 hops of 16 ms: shorter files give none
SHOWN = 5  # files or names named on the terminal per kind of problem; the report has them all


def genre_key(name: str) -> str:
    """The form genre names are compared in: case and runs of whitespace do not matter."""
    return " ".join(name.split()).casefold()


@dataclass(frozen=True)
class FileTags:
    """What training needs from one file's tags."""

    genres: tuple[str, ...]
    artist: str | None
    length_s: float


def read_file_tags(path: Path) -> FileTags:
    """GENRE values, the first ARTIST and the length of `path`; AudioInputError if unreadable."""
    import mutagen
    from mutagen.id3 import ID3

    try:
        audio = mutagen.File(path, easy=True)
    except (mutagen.MutagenError, OSError, ValueError) as exc:
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise AudioInputError(msg) from exc
    if audio is None or audio.info is None:
        msg = "not an audio format mutagen knows"
        raise AudioInputError(msg)
    tags = audio.tags
    if isinstance(tags, ID3):  # WAV and AIFF carry plain ID3; easy=True covers MP3 only
        genres = list(tags["TCON"].genres) if "TCON" in tags else []
        artists = list(tags["TPE1"].text) if "TPE1" in tags else []
    else:
        genres = list(tags.get("genre", [])) if tags is not None else []
        artists = list(tags.get("artist", [])) if tags is not None else []
    genres = [" ".join(g.split()) for g in genres if g.strip()]
    artist = next((" ".join(a.split()) for a in artists if a.strip()), None)
    return FileTags(tuple(genres), artist, float(audio.info.length or 0.0))


def load_genre_map(path: str | Path) -> dict[str, str]:
    """{genre_key(station name): class} from a TOML table such as `"Top 40" = "pop"`."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        msg = f"cannot read genre map {path}: {exc.strerror}"
        raise ConfigError(msg) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        msg = f"genre map {path} is not valid TOML: {exc}"
        raise ConfigError(msg) from exc
    mapping: dict[str, str] = {}
    for name, target in table.items():
        if not isinstance(target, str) or not target.strip():
            msg = f'genre map {path}: "{name}" must map to a class name, e.g. "{name}" = "pop"'
            raise ConfigError(msg)
        key, target = genre_key(name), " ".join(target.split())
        if mapping.get(key, target) != target:
            msg = f'genre map {path}: "{name}" maps to both {mapping[key]!r} and {target!r}'
            raise ConfigError(msg)
        mapping[key] = target
    if not mapping:
        msg = f'genre map {path} maps no genre; write lines such as "Top 40" = "pop"'
        raise ConfigError(msg)
    return mapping


@dataclass
class LibraryScan:
    """What a library holds for training, and every file left out with the reason."""

    root: Path
    files: int = 0
    items: list[Item] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    too_short: list[Path] = field(default_factory=list)
    untagged: list[Path] = field(default_factory=list)
    ambiguous: list[tuple[Path, tuple[str, ...]]] = field(default_factory=list)
    unmapped: Counter = field(default_factory=Counter)  # genre as first written → files
    without_artist: int = 0

    def classes(self) -> dict[str, int]:
        return dict(sorted(Counter(item.label for item in self.items).items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "library": str(self.root),
            "audio_files": self.files,
            "used": len(self.items),
            "classes": self.classes(),
            "artists": len({item.artist for item in self.items if item.artist}),
            "without_artist": self.without_artist,
            "unreadable": {str(p): why for p, why in self.unreadable},
            "too_short": [str(p) for p in self.too_short],
            "without_genre": [str(p) for p in self.untagged],
            "several_classes": {str(p): list(c) for p, c in self.ambiguous},
            "unmapped_genres": dict(self.unmapped.most_common()),
        }


def scan_library(root: str | Path, genre_map: dict[str, str] | None = None) -> LibraryScan:
    """Read the tags of every audio file under `root` (a progress bar on a terminal).

    Without `genre_map` each genre name (compared as `genre_key`) is its own class. Artists are
    compared the same way, so "The Band" and "the band" are one group.
    """
    root = Path(root)
    if not root.is_dir():
        msg = f"library {root} is not a folder"
        raise ConfigError(msg)
    scan = LibraryScan(root=root)
    files = audio_files(root)
    scan.files = len(files)
    spelled: dict[str, str] = {}  # genre_key → the genre as first written
    artists: dict[str, str] = {}  # genre_key(artist) → the artist as first written
    stderr = Console(stderr=True)
    for path in track(files, "reading tags", console=stderr, transient=True,
                      disable=not sys.stderr.isatty()):  # fmt: skip
        try:
            tags = read_file_tags(path)
        except AudioInputError as exc:
            scan.unreadable.append((path, str(exc)))
            continue
        if tags.length_s < MIN_LENGTH_S:
            scan.too_short.append(path)
            continue
        if not tags.genres:
            scan.untagged.append(path)
            continue
        keys = [genre_key(g) for g in tags.genres]
        for key, name in zip(keys, tags.genres, strict=True):
            spelled.setdefault(key, name)
        if genre_map is None:
            classes = {spelled[k] for k in keys}
        else:
            classes = {genre_map[k] for k in keys if k in genre_map}
            if not classes:
                scan.unmapped.update({spelled[k] for k in keys})
                continue
        if len(classes) > 1:
            scan.ambiguous.append((path, tuple(sorted(classes))))
            continue
        artist = artists.setdefault(genre_key(tags.artist), tags.artist) if tags.artist else None
        scan.without_artist += artist is None
        scan.items.append(Item(path=path, label=classes.pop(), artist=artist))
    return scan


def check_library(scan: LibraryScan, *, map_path: Path | None = None) -> None:
    """ConfigError, in one line, when `scan` cannot train a model tested on unseen artists."""
    where = f"library {scan.root}"
    if not scan.files:
        msg = f"{where} holds no audio files ({', '.join(AUDIO_SUFFIXES)})"
        raise ConfigError(msg)
    if len(scan.unreadable) == scan.files:
        first = _listed(scan.unreadable[:1])
        msg = f"{where}: none of its {scan.files} audio files could be read: {first}"
        raise ConfigError(msg)
    if not scan.items and not scan.unmapped and not scan.ambiguous:
        msg = f"{where}: none of its {scan.files} audio files has a GENRE tag"
        raise ConfigError(msg)
    if not scan.items and scan.unmapped:
        msg = f"{where}: no file's genre is in the genre map {map_path}; it lacks {_unmapped(scan)}"
        raise ConfigError(msg)
    classes = scan.classes()
    if len(classes) < 2:
        names = ", ".join(f"{c} ({n} files)" for c, n in classes.items()) or "none"
        msg = f"{where}: the tags give only one class, {names}; training needs at least 2"
        raise ConfigError(msg)
    groups: dict[str, set[str]] = defaultdict(set)
    for item in scan.items:
        groups[item.label].add(item.group)
    lonely = [label for label, g in groups.items() if len(g) < 2]
    if lonely:
        label = lonely[0]
        artist = next(i.artist for i in scan.items if i.label == label) or "one untitled file"
        msg = (
            f"{where}: class {label!r} has music by only one artist ({artist}); testing on "
            "unseen artists needs at least two per class (add music or leave the class out)"
        )
        raise ConfigError(msg)


def describe(scan: LibraryScan) -> list[str]:
    """Lines for the terminal: what is used, and what was left out and why (a few names each)."""
    classes = ", ".join(f"{c} {n}" for c, n in scan.classes().items())
    artists = len({item.artist for item in scan.items if item.artist})
    lines = [
        (
            f"{scan.root}: {scan.files} audio files, {len(scan.items)} used in "
            f"{len(scan.classes())} classes ({classes}), {artists} artist(s)"
        )
    ]
    if scan.without_artist:
        lines.append(f"  {scan.without_artist} used files have no ARTIST tag: each is a group")
    skipped = (
        ("unreadable", scan.unreadable),
        (f"shorter than {MIN_LENGTH_S:.1f} s", scan.too_short),
        ("without a GENRE tag", scan.untagged),
        ("with genres of several classes", scan.ambiguous),
    )
    for what, files in skipped:
        if files:
            lines.append(f"  skipped {len(files)} {what}: {_listed(files)}")
    if scan.unmapped:
        count = sum(scan.unmapped.values())
        lines.append(f"  skipped {count} with a genre the map does not name: {_unmapped(scan)}")
    return lines


def _listed(entries: list) -> str:
    """The first few files by name, each with its reason where it has one ((path, why) pairs)."""
    shown = []
    for entry in entries[:SHOWN]:
        path, why = entry if isinstance(entry, tuple) else (entry, None)
        why = ", ".join(why) if isinstance(why, tuple) else why
        shown.append(f"{path.name} ({why})" if why else path.name)
    more = f", … {len(entries) - SHOWN} more" if len(entries) > SHOWN else ""
    return ", ".join(shown) + more


def _unmapped(scan: LibraryScan) -> str:
    """'"Polka" (3 files), …': the genre names the map lacks, most files first."""
    names = scan.unmapped.most_common()
    shown = ", ".join(f'"{name}" ({n} file{"s" * (n > 1)})' for name, n in names[: 4 * SHOWN])
    return shown + (f", … {len(names) - 4 * SHOWN} more" if len(names) > 4 * SHOWN else "")


def write_labels_csv(scan: LibraryScan, out: Path) -> Path:
    """The used files as a dataset CSV (path,label,artist), read back by training and evaluate."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "artist"])
        for item in scan.items:
            writer.writerow([item.path.resolve(), item.label, item.artist or ""])
    return out


def labels_from_tags(
    root: str | Path, *, genre_map: str | Path | None, model: Path
) -> LibraryScan:
    """Scan and check a library, write its labels CSV beside `model`, and print what was used
    and what was skipped."""
    map_path = Path(genre_map) if genre_map is not None else None
    mapping = load_genre_map(map_path) if map_path is not None else None
    scan = scan_library(root, mapping)
    check_library(scan, map_path=map_path)
    for line in describe(scan):
        print(line, file=sys.stderr)
    write_labels_csv(scan, labels_csv_for(model))
    return scan


def labels_csv_for(model: Path) -> Path:
    """Where the labels CSV of a model trained from tags lives: beside the model."""
    return Path(model).with_suffix(".labels.csv")


def report_unseen_artists(
    model: Path, scan: LibraryScan, training: dict[str, Any], *, engine: str | None,
    cache_dir: str | Path | None,
) -> str:  # fmt: skip
    """Score the model on its test split (artists it never heard), write `<model>.report.json`
    (what was used, skipped, trained and scored), and return the scores as a markdown table."""
    from streamclf.evaluate import render_table
    from streamclf.train.evaluation import evaluate_model

    report_path = Path(model).with_suffix(".report.json")
    document: dict[str, Any] = {"library": scan.to_dict(), "training": training}
    held_out = sum(training["files"]["test"].values())
    if held_out:
        evaluation = evaluate_model(
            model, labels_csv_for(model), split="test", engine=engine, cache_dir=cache_dir
        )
        document["unseen_artists"] = evaluation.to_dict()
        summary = (
            f"on {evaluation.files} file{'s' * (evaluation.files != 1)} by artists it never "
            f"heard:\n\n"
            f"{render_table(evaluation.scores)}\n"
        )
    else:
        summary = "no test split (--test-share 0): no score on unseen artists\n"
    report_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    return f"{summary}report: {report_path}"
