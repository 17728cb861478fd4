#!/usr/bin/env python3
"""Build the genre evaluation set (datasets/genres/) from free music in Debian packages.

Every clip is a 30 s excerpt of a real recording shipped in a Debian 12 (bookworm) package,
re-encoded to 16 kHz mono Ogg Vorbis (the rate and channel mix the models see anyway). Each
track's label comes with its evidence, strongest first:

- ``genre_tag``: the file's own GENRE Vorbis comment (wesnoth "Romantic Classical", openclonk
  "Rock", "House", "Ambient", …);
- ``credits``: the package's credits or copyright text names the style ("composed by El Senator
  of the danish metal band Muldjord");
- ``title``: the track is named after its style ("Rock.ogg", "Metal madness", "Ambience");
- ``curator``: the same artist and soundtrack as a tagged track, judged by ear by the curator —
  the weakest evidence, marked so that it can be left out.

The split is by track, deterministic: within each label the tracks are ordered by the sha1 of
their id and every second one is held out (``test``); the rest (``calib``) is the only part
calibration may be fitted on. Fret-on-Fire songs ship the guitar as its own stem; the two stems
are mixed back into the song (as the game plays them), nothing is synthesised.

Usage (root, Debian mirrors reachable; ~1.1 GB of packages are downloaded to --work):

    python tools/make_genre_set.py --out datasets/genres --work /tmp/genres
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

EXCERPT_S = 30.0
CLIP_RATE_HZ = 16000
VORBIS_QUALITY = 4
MANIFEST_FIELDS = ("path", "label", "split", "artist", "id", "package", "version", "source_file",
                   "start_s", "duration_s", "license", "label_source", "reason")
FOF = "usr/share/games/fretsonfire/data/songs"
WESNOTH = "usr/share/games/wesnoth/1.16/data/core/music"
OPENCLONK = "usr/share/games/openclonk/Music.ocg"
FREEDROID = "usr/share/freedroidrpg/data/sound/music"
STK = "usr/share/games/supertuxkart/data/music"
WARMUX = "usr/share/games/warmux/music"
NEXUIZ_PK3 = "usr/share/games/nexuiz/data/music.pk3"

LICENSES = {
    "wesnoth-1.16-music": "GPL-2+",
    "openclonk-data": "ISC / CC-BY-3.0 (game content, see copyright)",
    "megaglest-data": "CC-BY-SA-3.0",
    "warmux-data": "GPL-2+",
    "hedgewars-data": "GPL-2",
    "fretsonfire-songs-muldjord": "CC-BY-SA-3.0",
    "fretsonfire-songs-sectoid": "GPL (see copyright)",
    "nexuiz-music": "GPL-2+",
    "supertuxkart-data": "CC-BY-SA-3.0",
    "freedroidrpg-data": "GPL-2+",
    "flare-game": "CC-BY-SA-3.0+",
}


@dataclass(frozen=True)
class Track:
    """One source recording: where it is, what it is, and why we say so."""

    id: str
    package: str
    files: tuple[str, ...]  # paths inside the package; several stems are mixed
    label: str
    label_source: str
    reason: str
    artist: str


def _t(id_: str, package: str, files: str | tuple[str, ...], label: str, source: str, reason: str,
       artist: str) -> Track:
    return Track(id_, package, (files,) if isinstance(files, str) else files, label, source, reason,
                 artist)


def _fof(package: str, song: str, label: str, source: str, reason: str, artist: str) -> Track:
    folder = f"{FOF}/{package.rsplit('-', 1)[1]}/{song}"
    ident = f"fof-{song.lower().replace(' ', '_')}"
    return _t(ident, package, (f"{folder}/song.ogg", f"{folder}/guitar.ogg"), label, source, reason,
              artist)


_WESNOTH = {  # file stem: composer (GENRE=Romantic Classical in every file)
    "battle": "Aleksi Aubry-Carlson", "breaking_the_chains": "Mattias Westlund",
    "casualties_of_war": "Tyler Johnson", "elvish-theme": "Doug Kaufman",
    "heroes_rite": "Doug Kaufman", "knolls": "Timothy Pinkham", "loyalists": "Joseph G. Toscano",
    "northerners": "Stephen Rozanc", "nunc_dimittis": "Jeremy Nicoll",
    "the_dangerous_symphony": "Gianmarco Leone",
}
_MULDJORD = ("chaos_god", "internal_degeneration", "mutilated_mime", "armygeddon")
_SECTOID = ("Escape from chaosland", "Feelings", "War of freedom")
_ELYSIS = ("brainsukker", "chaos-fog", "infight", "neuronal-diving")

TRACKS: tuple[Track, ...] = (
    *(_t(f"wesnoth-{stem}", "wesnoth-1.16-music", f"{WESNOTH}/{stem}.ogg", "classical",
         "genre_tag", "GENRE=Romantic Classical", artist) for stem, artist in _WESNOTH.items()),
    _t("megaglest-romans", "megaglest-data",
       "usr/share/games/megaglest/techs/megapack/factions/romans/music/romans.ogg", "classical",
       "genre_tag", "GENRE=Classical", "Eliminator"),
    _t("warmux-divertissement", "warmux-data", f"{WARMUX}/menu/Divertissement_pour_flute.ogg",
       "classical", "genre_tag", "GENRE=Classique (flute divertimento)", "Azzoug Lawrence"),
    _t("openclonk-urbanbolero", "openclonk-data", f"{OPENCLONK}/UrbanBolero.ogg", "classical",
       "genre_tag", "GENRE=Orchestral", "Martin Strohmeier"),
    *(_fof("fretsonfire-songs-muldjord", song, "metal", "credits",
           "readme: composed by El Senator of the danish metal band Muldjord", "Muldjord")
      for song in _MULDJORD),
    _fof("fretsonfire-songs-sectoid", "Metal madness", "metal", "title",
         "title 'Metal madness'", "Sectoid"),
    *(_fof("fretsonfire-songs-sectoid", song, "metal", "curator",
           "same artist and guitar-game song pack as 'Metal madness'", "Sectoid")
      for song in _SECTOID),
    _t("hedgewars-rock", "hedgewars-data", "usr/share/games/hedgewars/Data/Music/Rock.ogg", "rock",
       "title", "file name Rock.ogg", "Hedgewars team"),
    _t("openclonk-motorway", "openclonk-data", f"{OPENCLONK}/Motorway.ogg", "rock", "genre_tag",
       "GENRE=Rock", "Martin Strohmeier"),
    _t("openclonk-skylands", "openclonk-data", f"{OPENCLONK}/TheSkylands.ogg", "rock", "genre_tag",
       "GENRE=Rock", "Martin Strohmeier"),
    _t("warmux-like_a_rock", "warmux-data", f"{WARMUX}/ingame/Olivier_Militon.-.Like_a_rock.ogg",
       "rock", "title", "title 'Like a rock'", "Olivier Militon"),
    _t("nexuiz-digital_pursuit", "nexuiz-music", "pk3:sound/cdtracks/digital-pursuit.ogg",
       "electronic", "genre_tag", "GENRE=Electronic", "Parapraxis"),
    _t("stk-valley", "supertuxkart-data", f"{STK}/valley.ogg", "electronic", "genre_tag",
       "GENRE=Electronic", "DJ Helium"),
    *(_t(f"nexuiz-{stem}", "nexuiz-music", f"pk3:sound/cdtracks/{stem}.ogg", "electronic",
         "curator", "elysis' electronic score for the Nexuiz soundtrack", "elysis")
      for stem in _ELYSIS),
    _t("openclonk-crushedice", "openclonk-data", f"{OPENCLONK}/@CrushedIceCocktail.ogg", "dance",
       "genre_tag", "GENRE=House", "Martin Strohmeier"),
    _t("freedroid-temple", "freedroidrpg-data", f"{FREEDROID}/temple.ogg", "dance", "genre_tag",
       "GENRE=dnb (drum and bass)", "Arvid Picciani"),
    _t("stk-skyvibe", "supertuxkart-data", f"{STK}/SkyVibe-HighFrequency.ogg", "dance",
       "genre_tag", "GENRE=Psychedelic (psytrance)", "Speedsound"),
    _t("flare-wind_ambient", "flare-game",
       "usr/share/games/flare/mods/fantasycore/music/wind_ambient.ogg", "ambient", "genre_tag",
       "GENRE=Ambient", "Luke.RUSTLTD"),
    _t("openclonk-luciddream", "openclonk-data", f"{OPENCLONK}/LucidDream.ogg", "ambient",
       "genre_tag", "GENRE=Ambient", "Martin Strohmeier"),
    _t("freedroid-thebeginning", "freedroidrpg-data", f"{FREEDROID}/TheBeginning.ogg", "ambient",
       "genre_tag", "GENRE=ambient", "4T Thieves"),
    _t("warmux-construction", "warmux-data", f"{WARMUX}/ingame/construction.ogg", "ambient",
       "genre_tag", "GENRE=Ambiance", "WarMUX team"),
    _t("freedroid-ambience", "freedroidrpg-data", f"{FREEDROID}/Ambience.ogg", "ambient", "title",
       "title 'Ambience'", "FreedroidRPG team"),
    _t("freedroid-ambientbattle", "freedroidrpg-data", f"{FREEDROID}/AmbientBattle.ogg", "ambient",
       "title", "title 'AmbientBattle'", "FreedroidRPG team"),
)


def assign_splits(tracks: tuple[Track, ...] | list[Track]) -> dict[str, str]:
    """Track id → 'calib' | 'test': per label, sha1 order, every second track held out."""
    splits: dict[str, str] = {}
    for label in sorted({t.label for t in tracks}):
        ids = sorted((t.id for t in tracks if t.label == label),
                     key=lambda i: hashlib.sha1(i.encode()).hexdigest())
        splits.update({i: ("test" if k % 2 else "calib") for k, i in enumerate(ids)})
    return splits


def _run(*cmd: str, cwd: Path | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def fetch_package(package: str, work: Path) -> tuple[Path, str]:
    """apt-get download + dpkg-deb -x into work/x/<package>; returns (root, version)."""
    debs, root = work / "debs", work / "x" / package
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        _run("apt-get", "download", package, cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    deb = found[-1]
    if not root.is_dir():
        root.mkdir(parents=True)
        _run("dpkg-deb", "-x", str(deb), str(root))
    if package == "nexuiz-music" and not (root / "pk3").is_dir():
        with zipfile.ZipFile(root / NEXUIZ_PK3) as pk3:
            pk3.extractall(root / "pk3")
    return root, _run("dpkg-deb", "-f", str(deb), "Version").strip()


def _source(root: Path, name: str) -> Path:
    return root / "pk3" / name[4:] if name.startswith("pk3:") else root / name


def duration_s(path: Path) -> float:
    return float(_run("ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                      "default=nw=1:nk=1", str(path)))


def excerpt_start_s(total_s: float) -> float:
    """A third into the track (past intros), so that the excerpt still fits."""
    return round(max(0.0, min(total_s / 3.0, total_s - EXCERPT_S)), 2)


def cut_excerpt(sources: list[Path], start_s: float, out: Path) -> None:
    """ffmpeg: the stems mixed (unscaled, as the game plays them), 30 s, 16 kHz mono Vorbis."""
    inputs = [a for s in sources for a in ("-ss", f"{start_s}", "-t", f"{EXCERPT_S}", "-i", str(s))]
    mix = ["-filter_complex", f"amix=inputs={len(sources)}:normalize=0"] if len(sources) > 1 else []
    out.parent.mkdir(parents=True, exist_ok=True)
    _run("ffmpeg", "-v", "error", "-y", *inputs, *mix, "-ac", "1", "-ar", str(CLIP_RATE_HZ),
         "-c:a", "libvorbis", "-q:a", str(VORBIS_QUALITY), "-map_metadata", "-1", str(out))


def build(out: Path, work: Path) -> list[dict[str, str]]:
    """Write out/clips/<label>/<id>.ogg, out/copyright/<package>, out/manifest.csv."""
    splits = assign_splits(TRACKS)
    rows, versions = [], {}
    for track in TRACKS:
        root, versions[track.package] = fetch_package(track.package, work)
        sources = [_source(root, f) for f in track.files]
        start = excerpt_start_s(min(duration_s(s) for s in sources))
        clip = Path("clips") / track.label / f"{track.id}.ogg"
        cut_excerpt(sources, start, out / clip)
        rows.append({
            "path": clip.as_posix(), "label": track.label, "split": splits[track.id],
            "artist": track.artist, "id": track.id, "package": track.package,
            "version": versions[track.package], "source_file": " + ".join(track.files),
            "start_s": f"{start:g}", "duration_s": f"{EXCERPT_S:g}",
            "license": LICENSES[track.package], "label_source": track.label_source,
            "reason": track.reason,
        })
        print(f"{track.label:10s} {splits[track.id]:5s} {track.id}")
    (out / "copyright").mkdir(parents=True, exist_ok=True)
    for package in versions:
        shutil.copyfile(work / "x" / package / "usr/share/doc" / package / "copyright",
                        out / "copyright" / f"{package}.txt")
    with open(out / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("datasets/genres"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/genres"))
    args = parser.parse_args()
    rows = build(args.out, args.work)
    print(f"{len(rows)} clips in {args.out}")


if __name__ == "__main__":
    main()
