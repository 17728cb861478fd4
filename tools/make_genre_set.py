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

What to cut is data, not code: ``datasets/genres/tracks.csv`` has one row per recording (id,
label, split, package, artist, files, label_source, reason) and ``packages.csv`` pins each
package's exact Debian version and licence; this tool downloads those versions
(``apt-get download NAME=VERSION``, ``dpkg-deb -x``, never installed), cuts a 30 s excerpt a
third into each track, and writes the clips, the manifest and each package's copyright file.
Fret-on-Fire songs ship the guitar as its own stem; the two stems are mixed back into the song
(as the game plays them). MIDI files (OpenTTD's OpenMSX) hold notes, not sound: they are
played through Debian's fluidsynth with the FluidR3 General MIDI soundfont
(``apt-get install fluidsynth fluid-soundfont-gm``), and the manifest's ``rendered_with`` names
both versions; every other clip is a decoded recording. GCompris keeps its recordings in Qt
resource files; a file named ``<file.rcc>!<path>`` is read out of one. MMA (Musical MIDI
Accompaniment) ships a library of grooves named after their style; a file named
``<library.mma>#<Groove>`` is that groove played by the package's own ``mma`` over the chord
chart of MMA's groove preview (``mma -V``), then rendered like any MIDI file. MuseScore demo
scores and LMMS demo projects are played by the program they were written for, headless
(``apt-get install musescore3 lmms``); ``rendered_with`` names its version.

The ``split`` column (calib/test) is for the older tools that fit on ``calib`` and score
``test``. It is by track: within each label and each batch of added tracks, ids in sha1 order,
every second one held out. The first 40 tracks keep the split the fused default's calibration
was fitted on (its calib rows).
Evaluations across packages and artists ignore it and group by ``package`` and ``artist``.
Reserved packages (kept for an independent evaluation; their names' sha256 digests are in
datasets/genres/reserved-packages.txt) are refused.

Usage (root, Debian mirrors reachable; 2.0 GB of packages are downloaded to --work):

    python tools/make_genre_set.py --out datasets/genres --work /tmp/genres
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import struct
import subprocess
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

EXCERPT_S = 30.0
CLIP_RATE_HZ = 16000
VORBIS_QUALITY = 4
MANIFEST_FIELDS = ("path", "label", "split", "artist", "id", "package", "version", "source_file",
                   "start_s", "duration_s", "license", "label_source", "reason", "rendered_with")
TRACKS_CSV = Path(__file__).resolve().parent.parent / "datasets" / "genres" / "tracks.csv"
PACKAGES_CSV = TRACKS_CSV.with_name("packages.csv")
RESERVED_TXT = TRACKS_CSV.with_name("reserved-packages.txt")


def package_digest(package: str) -> str:
    """How reserved-packages.txt names a package: the sha256 of its name (the names stay out)."""
    return hashlib.sha256(package.encode()).hexdigest()


def load_reserved(path: Path = RESERVED_TXT) -> frozenset[str]:
    """The digests of the packages kept for an independent evaluation (one a line, # comments)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return frozenset(line for line in lines if line)


def reserved_among(packages) -> list[str]:
    """Those of `packages` that are reserved, sorted."""
    reserved = load_reserved()
    return sorted(p for p in set(packages) if package_digest(p) in reserved)


LABEL_SOURCES = ("genre_tag", "credits", "title", "curator")
NEXUIZ_PK3 = "usr/share/games/nexuiz/data/music.pk3"
RCC_SEPARATOR = "!"  # "<Qt .rcc file in the package>!<path inside it>"
GROOVE_SEPARATOR = "#"  # "<MMA library file in the package>#<groove defined in it>"
PREVIEW_CHORDS = ("I", "vi", "ii", "V7")  # the chart of MMA's own groove preview (mma -V)
GROOVE_BARS = 32  # one bar a chord: ≥ 48 s at MMA's default 120 bpm, room for a 30 s excerpt
GROOVE_SEED = 1  # MMA's RndSeed: its random humanisation repeats from one build to the next
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")  # Debian fluid-soundfont-gm
RECORDED = "recording (decoded by ffmpeg)"
SCORE_SUFFIXES = (".mscx", ".mscz")  # MuseScore scores, rendered by musescore3
LMMS_SUFFIXES = (".mmp", ".mmpz")  # LMMS projects, rendered by lmms


@dataclass(frozen=True)
class Package:
    """One Debian package pinned to the version the clips were cut from."""

    name: str
    version: str
    license: str


@dataclass(frozen=True)
class Track:
    """One source recording: where it is, what it is, and why we say so."""

    id: str
    label: str
    split: str
    package: str
    artist: str
    files: tuple[str, ...]  # paths inside the package; several stems are mixed
    label_source: str
    reason: str


def load_packages(path: Path = PACKAGES_CSV) -> dict[str, Package]:
    """packages.csv (package,version,license) → {name: Package}."""
    with open(path, newline="") as fh:
        return {r["package"]: Package(r["package"], r["version"], r["license"])
                for r in csv.DictReader(fh)}


def load_tracks(path: Path = TRACKS_CSV) -> tuple[Track, ...]:
    """tracks.csv: one row per recording, its label, split and evidence (see the README)."""
    with open(path, newline="") as fh:
        return tuple(Track(r["id"], r["label"], r["split"], r["package"], r["artist"],
                           tuple(r["files"].split(" + ")), r["label_source"], r["reason"])
                     for r in csv.DictReader(fh))


def _run(*cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def fetch_package(package: Package, work: Path) -> Path:
    """apt-get download of the pinned version + dpkg-deb -x into work/x/<name>; returns the root."""
    debs, root = work / "debs", work / "x" / package.name
    debs.mkdir(parents=True, exist_ok=True)
    pattern = f"{package.name}_{package.version.replace(':', '%3a')}_*.deb"
    if not any(debs.glob(pattern)):
        _run("apt-get", "download", f"{package.name}={package.version}", cwd=debs)
    deb = next(debs.glob(pattern))
    if not root.is_dir():
        root.mkdir(parents=True)
        _run("dpkg-deb", "-x", str(deb), str(root))
    if package.name == "nexuiz-music" and not (root / "pk3").is_dir():
        with zipfile.ZipFile(root / NEXUIZ_PK3) as pk3:
            pk3.extractall(root / "pk3")
    return root


def rcc_entries(path: Path) -> dict[str, bytes]:
    """{path: bytes} of a Qt resource file (.rcc, format 1-3, zlib or stored entries).

    GCompris ships its activities' sounds inside .rcc files; Debian has no tool to unpack
    them, and the format is small: a header, a tree of fixed-size nodes, a name table
    (UTF-16), a data table of length-prefixed blobs.
    """
    blob = path.read_bytes()
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 22 if version >= 2 else 14

    def name(offset: int) -> str:
        length = struct.unpack(">H", blob[names + offset:names + offset + 2])[0]
        return blob[names + offset + 6:names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str):
        node = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[node:node + 6])
        here = prefix + (name(name_offset) if index else "")
        if flags & 2:  # directory
            count, first = struct.unpack(">II", blob[node + 6:node + 14])
            for child in range(first, first + count):
                yield from walk(child, here + "/" if index else "")
            return
        start = data + struct.unpack(">I", blob[node + 10:node + 14])[0]
        size = struct.unpack(">I", blob[start:start + 4])[0]
        payload = blob[start + 4:start + 4 + size]
        yield here, zlib.decompress(payload[4:]) if flags & 1 else payload

    return dict(walk(0, ""))


def groove_chart(library: Path, groove: str, *, bars: int = GROOVE_BARS) -> str:
    """An MMA song that plays one groove of a library file over the preview chart, one chord a bar.

    The chart is MMA's own for previewing a groove (``mma -V``), so no chord choice of ours
    favours one style: the groove alone carries it. Grooves humanise with random skips, timing
    and volume; a fixed seed makes a rebuild give the same notes.
    """
    chords = [PREVIEW_CHORDS[bar % len(PREVIEW_CHORDS)] for bar in range(bars)]
    head = [f"RndSeed {GROOVE_SEED}", f"Use {library}", f"Groove {groove}"]
    return "\n".join([*head, *chords]) + "\n"


def play_groove(root: Path, library: str, groove: str, work: Path) -> Path:
    """The groove as a MIDI file, written by the package's own mma (pure Python, not installed)."""
    midi = work / "mma" / f"{Path(library).parent.name}-{Path(library).stem}-{groove}.mid"
    if not midi.is_file():
        midi.parent.mkdir(parents=True, exist_ok=True)
        song = midi.with_suffix(".mma")
        song.write_text(groove_chart(root / library, groove))
        _run("python3", str(root / "usr/bin/mma"), str(song), "-f", str(midi),
             env={"PATH": "/usr/bin:/bin", "MMA_HOME": str(root / "usr/share/mma")})
    return midi


def _source(root: Path, name: str, work: Path) -> Path:
    """A file of the unpacked package, out of nexuiz's pk3, a GCompris .rcc or MMA where named
    so."""
    if GROOVE_SEPARATOR in name:
        library, groove = name.split(GROOVE_SEPARATOR)
        return play_groove(root, library, groove, work)
    if name.startswith("pk3:"):
        return root / "pk3" / name[4:]
    if RCC_SEPARATOR in name:
        rcc, inner = name.split(RCC_SEPARATOR)
        target = root / "rcc" / inner
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(rcc_entries(root / rcc)[inner])
        return target
    return root / name


def installed(*names: str) -> str:
    """'name version + …' of Debian packages as installed here, for the manifest."""
    return " + ".join(_run("dpkg-query", "-W", "-f", "${Package} ${Version}", n) for n in names)


def render_midi(midi: Path, work: Path) -> tuple[Path, str]:
    """A General MIDI file played through fluidsynth with the FluidR3 GM soundfont, as WAV.

    MIDI holds notes, not sound: the timbre is the soundfont's, the same for every MIDI track,
    which is why the manifest names the renderer.
    """
    wav = work / "midi" / f"{midi.stem}.wav"
    if not wav.is_file():
        wav.parent.mkdir(parents=True, exist_ok=True)
        _run("fluidsynth", "-ni", "-q", "-r", "44100", "-F", str(wav), str(SOUNDFONT), str(midi))
    return wav, f"{installed('fluidsynth', 'fluid-soundfont-gm')} ({SOUNDFONT.name}, 44.1 kHz)"


def render_project(project: Path, work: Path) -> tuple[Path, str]:
    """A MuseScore score or an LMMS project played by the program it was written for, as WAV.

    Both run headless (Qt offscreen) and synthesise with their own instruments: MuseScore with
    its General MIDI soundfont, LMMS with its synthesizer plugins and samples.
    """
    wav = work / "projects" / f"{project.stem}.wav"
    score = project.suffix in SCORE_SUFFIXES
    if not wav.is_file():
        wav.parent.mkdir(parents=True, exist_ok=True)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work / "home"), "QT_QPA_PLATFORM": "offscreen"}
        if score:
            _run("mscore3", "-o", str(wav), str(project), env=env)
        else:
            _run("lmms", "--allowroot", "render", str(project), "-f", "wav", "-o", str(wav),
                 env=env)
    how = (installed("musescore3", "musescore-general-soundfont-small") if score
           else installed("lmms"))
    return wav, f"{how} ({'mscore3 -o' if score else 'lmms render'}, headless)"


def to_audio(source: Path, work: Path) -> tuple[Path, str]:
    """(audio file, how it became sound): notes and projects are rendered, recordings kept."""
    if source.suffix == ".mid":
        return render_midi(source, work)
    if source.suffix in SCORE_SUFFIXES + LMMS_SUFFIXES:
        return render_project(source, work)
    return source, RECORDED


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


def check(tracks: tuple[Track, ...], packages: dict[str, Package]) -> None:
    """Refuse a reserved or unpinned package, an unknown evidence kind, a repeated id."""
    ids = [t.id for t in tracks]
    bad = reserved_among(t.package for t in tracks)
    bad += sorted({t.package for t in tracks} - set(packages))
    bad += sorted({t.id for t in tracks if t.label_source not in LABEL_SOURCES})
    bad += sorted({i for i in ids if ids.count(i) > 1})
    bad += sorted({t.id for t in tracks if t.split not in ("calib", "test") or not t.artist})
    if bad:
        msg = ("tracks.csv: reserved, unpinned, repeated or incomplete: "
               f"{', '.join(dict.fromkeys(bad))}")
        raise SystemExit(msg)


def build(out: Path, work: Path, tracks: tuple[Track, ...],
          packages: dict[str, Package]) -> list[dict[str, str]]:
    """Write out/clips/<label>/<id>.ogg, out/copyright/<package>.txt, out/manifest.csv."""
    check(tracks, packages)
    rows, roots = [], {}
    for track in tracks:
        package = packages[track.package]
        if package.name not in roots:
            roots[package.name] = fetch_package(package, work)
        audio = [to_audio(_source(roots[package.name], f, work), work) for f in track.files]
        sources, how = [a for a, _ in audio], audio[0][1]
        if any(GROOVE_SEPARATOR in f for f in track.files):
            chart = ", ".join(PREVIEW_CHORDS)
            how = (f"{package.name} {package.version} (groove over {chart}, {GROOVE_BARS} bars) "
                   f"+ {how}")
        start = excerpt_start_s(min(duration_s(s) for s in sources))
        clip = Path("clips") / track.label / f"{track.id}.ogg"
        cut_excerpt(sources, start, out / clip)
        rows.append({
            "path": clip.as_posix(), "label": track.label, "split": track.split,
            "artist": track.artist, "id": track.id, "package": package.name,
            "version": package.version, "source_file": " + ".join(track.files),
            "start_s": f"{start:g}", "duration_s": f"{EXCERPT_S:g}",
            "license": package.license, "label_source": track.label_source,
            "reason": track.reason, "rendered_with": how,
        })
        print(f"{track.label:10s} {track.split:5s} {track.id}")
    (out / "copyright").mkdir(parents=True, exist_ok=True)
    for name, root in roots.items():
        shutil.copyfile(root / "usr/share/doc" / name / "copyright",
                        out / "copyright" / f"{name}.txt")
    with open(out / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _last_line(exc: subprocess.CalledProcessError) -> str:
    """The program's last word (mma writes its errors to stdout, the others to stderr)."""
    text = (exc.stderr or exc.stdout or "").strip()
    return text.splitlines()[-1] if text else str(exc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("datasets/genres"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/genres"))
    parser.add_argument("--tracks", type=Path, default=TRACKS_CSV)
    parser.add_argument("--packages", type=Path, default=PACKAGES_CSV)
    args = parser.parse_args()
    try:
        rows = build(args.out, args.work, load_tracks(args.tracks), load_packages(args.packages))
    except subprocess.CalledProcessError as exc:
        msg = f"{' '.join(exc.cmd)}: {_last_line(exc)}"
        raise SystemExit(msg) from None
    except FileNotFoundError as exc:  # a program not installed (fluidsynth for MIDI, ffmpeg)
        raise SystemExit(f"{exc.filename}: not found") from None
    print(f"{len(rows)} clips in {args.out}")


if __name__ == "__main__":
    main()
