#!/usr/bin/env python3
"""Build the speech set (datasets/speech/) from the recorded voices of a Debian game.

Flight of the Amazon Queen (Debian 12 main, package ``flight-of-the-amazon-queen``, its own
licence: free to give away and to modify, see ``copyright/``) is a talkie adventure: 6745 lines
spoken by its cast, stored as MP3 entries (11025 Hz mono) in one ScummVM resource file,
``queen.1c``. This tool downloads that exact version (``apt-get download``, ``dpkg-deb -x``,
never installed), reads the entries' table, takes every STRIDE-th spoken line of at least
MIN_LINE_BYTES in name order (so scenes and speakers vary), joins the lines with a short pause
into clips of about CLIP_S seconds, as talk radio runs, and writes 16 kHz mono Ogg Vorbis clips,
a manifest (which lines went into which clip) and the package's copyright file.

Usage (root, Debian mirrors reachable; 35 MB downloaded to --work):

    python tools/make_speech_set.py --out datasets/speech --work /tmp/speech
"""

from __future__ import annotations

import argparse
import csv
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

PACKAGE = "flight-of-the-amazon-queen"
VERSION = "1.0.0-9"
LICENSE = "Flight-of-the-Amazon-Queen-License"
RESOURCE = "usr/share/scummvm/flight-of-the-amazon-queen/queen.1c"
ENTRY_BYTES = 21  # name (12, NUL-padded), bundle (1), offset (4, BE), size (4, BE)
MIN_LINE_BYTES = 6000  # ~3 s of the game's 16 kb/s MP3: whole sentences, not grunts
STRIDE = 29  # every 29th long line: spread over the whole game
CLIP_S = 30.0
N_CLIPS = 8
PAUSE_S = 0.3  # between two lines, as in a conversation
CLIP_RATE_HZ = 16000
VORBIS_QUALITY = 4
MANIFEST_FIELDS = ("path", "package", "version", "source_file", "lines", "duration_s",
                   "license")


def speech_entries(resource: bytes) -> list[tuple[str, int, int]]:
    """(name, offset, size) of each spoken line (`.SB`) in a compressed ScummVM queen file."""
    if resource[:4] != b"QTBL":
        msg = "not a compressed Flight of the Amazon Queen resource file (no QTBL tag)"
        raise SystemExit(msg)
    n_entries = struct.unpack(">H", resource[13:15])[0]
    entries = []
    for i in range(n_entries):
        at = 15 + i * ENTRY_BYTES
        name = resource[at : at + 12].rstrip(b"\0").decode("ascii")
        offset, size = struct.unpack(">II", resource[at + 13 : at + ENTRY_BYTES])
        if name.endswith(".SB"):
            entries.append((name, offset, size))
    return sorted(entries)


def decode(mp3: bytes) -> np.ndarray:
    """One MP3 line → float32 mono at CLIP_RATE_HZ, through ffmpeg."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-f", "mp3", "-i", "pipe:0", "-ac", "1",
                          "-ar", str(CLIP_RATE_HZ), "-f", "f32le", "pipe:1"],
                         input=mp3, capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype=np.float32)


def write_ogg(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "f32le", "-ar", str(CLIP_RATE_HZ),
                    "-ac", "1", "-i", "pipe:0", "-c:a", "libvorbis", "-q:a", str(VORBIS_QUALITY),
                    str(path)], input=audio.astype(np.float32).tobytes(), check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the set's folder")
    parser.add_argument("--work", type=Path, required=True, help="where the package goes")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=args.work, check=True)
    (deb,) = args.work.glob(f"{PACKAGE}_*.deb")
    tree = args.work / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    resource = (tree / RESOURCE).read_bytes()
    lines = [e for e in speech_entries(resource) if e[2] >= MIN_LINE_BYTES][::STRIDE]
    pause = np.zeros(int(PAUSE_S * CLIP_RATE_HZ), np.float32)
    rows, pending = [], iter(lines)
    for k in range(N_CLIPS):
        parts, names = [], []
        while sum(p.size for p in parts) < CLIP_S * CLIP_RATE_HZ:
            name, offset, size = next(pending)
            parts += [decode(resource[offset : offset + size]), pause]
            names.append(name)
        audio = np.concatenate(parts)
        path = f"clips/fotaq-{k:02d}.ogg"
        write_ogg(args.out / path, audio)
        rows.append({"path": path, "package": PACKAGE, "version": VERSION,
                     "source_file": RESOURCE, "lines": " ".join(names),
                     "duration_s": f"{audio.size / CLIP_RATE_HZ:.2f}", "license": LICENSE})
    with (args.out / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "copyright").mkdir(exist_ok=True)
    shutil.copy(tree / f"usr/share/doc/{PACKAGE}/copyright",
                args.out / "copyright" / f"{PACKAGE}.txt")


if __name__ == "__main__":
    main()
