"""streamclf's loudness meter against ffmpeg's `ebur128` filter, on the same float WAV files.

Usage: .venv/bin/python tools/loudness_vs_ffmpeg.py [CLIP ...]   (default: all of datasets/genres)

Prints a markdown table: integrated loudness, loudness range and true peak from both, and the
largest difference of momentary and short-term loudness over the 100 ms steps from 3 s on
(ffmpeg logs one decimal, so 0.05 is agreement). tests/test_loudness.py uses `ffmpeg_ebur128`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf

from streamclf.loudness import LoudnessMeter

REPO = Path(__file__).resolve().parents[1]


def ffmpeg_ebur128(path: Path) -> dict:
    """ffmpeg's per-step M and S (keyed by t, rounded to 0.1 s) and its summary I, LRA, peak."""
    proc = subprocess.run(["ffmpeg", "-v", "verbose", "-nostats", "-hide_banner", "-i", str(path),
                           "-af", "ebur128=peak=true:framelog=verbose", "-f", "null", "-"],
                          capture_output=True, text=True, check=True, timeout=300)
    log = proc.stderr
    steps = {round(float(t), 1): (float(m), float(s)) for t, m, s in
             re.findall(r"t:\s*([\d.]+)\s+TARGET:\S+ LUFS\s+M:\s*(\S+)\s+S:\s*(\S+)", log)}
    summary = log[log.rindex("Summary:"):]
    return {
        "steps": steps,
        "I": float(re.search(r"I:\s+(\S+) LUFS", summary).group(1)),
        "LRA": float(re.search(r"LRA:\s+(\S+) LU", summary).group(1)),
        "TP": float(re.search(r"True peak:\s+Peak:\s+(\S+) dBFS", summary).group(1)),
    }


def compare(audio, rate_hz: int, workdir: Path) -> dict:
    """Both meters on `audio` ((frames, channels) float32): the figures and the differences."""
    path = workdir / "signal.wav"
    sf.write(path, audio, rate_hz, subtype="FLOAT")
    ref = ffmpeg_ebur128(path)
    meter = LoudnessMeter(rate_hz, audio.shape[1])
    readings = [r for start in range(0, len(audio), 4096) for r in meter.push(audio[start:start + 4096])]
    by_t = {round(r.t_s, 1): r for r in readings}
    common = [t for t in ref["steps"] if t in by_t and t >= 3.0]  # S needs 3 s
    last = readings[-1]
    return {
        "ours": {"I": last.integrated_lufs, "LRA": last.range_lu, "TP": last.true_peak_dbtp},
        "ffmpeg": {k: ref[k] for k in ("I", "LRA", "TP")},
        "steps_compared": len(common),
        "steps": len(readings),
        "max_dM": max((abs(by_t[t].momentary_lufs - ref["steps"][t][0]) for t in common), default=0),
        "max_dS": max((abs(by_t[t].short_term_lufs - ref["steps"][t][1]) for t in common), default=0),
    }


def main(argv: list[str]) -> int:
    clips = [Path(a) for a in argv] or sorted((REPO / "datasets" / "genres" / "clips").glob("*/*"))
    print("| clip | rate, ch | I ours / ffmpeg | LRA ours / ffmpeg | TP ours / ffmpeg | max ΔM | max ΔS |")
    print("| --- | --- | --- | --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            audio, rate_hz = sf.read(clip, dtype="float32", always_2d=True)
            c = compare(audio, rate_hz, Path(tmp))
            o, f = c["ours"], c["ffmpeg"]
            print(f"| {clip.parent.name}/{clip.stem} | {rate_hz}, {audio.shape[1]} | "
                  f"{o['I']:.2f} / {f['I']:.1f} | {o['LRA']:.2f} / {f['LRA']:.1f} | "
                  f"{o['TP']:.2f} / {f['TP']:.1f} | {c['max_dM']:.2f} | {c['max_dS']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
