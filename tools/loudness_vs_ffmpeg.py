"""streamclf's loudness meter against ffmpeg's `ebur128` filter, on the same float WAV files.

Usage: .venv/bin/python tools/loudness_vs_ffmpeg.py [CLIP ...]   (default: all of datasets/genres)
       .venv/bin/python tools/loudness_vs_ffmpeg.py --tones         (EBU Tech 3341/3342-style tones)

Prints a markdown table: integrated loudness, loudness range and true peak from both, and the
largest difference of momentary loudness over the 100 ms steps from 3 s on and of short-term
loudness over the whole seconds from 3 s on (the meter reads it once a second; ffmpeg logs one
decimal, so 0.05 is agreement). tests/test_loudness.py uses `ffmpeg_ebur128`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from streamclf.loudness import LoudnessMeter

REPO = Path(__file__).resolve().parents[1]
TONE_RATE_HZ = 48000


def sine(*, dbfs: float, seconds: float, freq_hz: float = 1000.0, rate_hz: int = TONE_RATE_HZ,
         channels: int = 2, phase: float = 0.0) -> np.ndarray:
    """A (frames, channels) float32 sine whose peak is `dbfs` (EBU test tones are given so)."""
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    x = 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq_hz * t + phase)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def fade_in(frames: int, fade_frames: int) -> np.ndarray:
    """A (frames, 1) raised-cosine ramp over the first `fade_frames`, then 1."""
    ramp = np.minimum(1.0, np.arange(frames) / fade_frames)
    return (0.5 - 0.5 * np.cos(np.pi * ramp))[:, None].astype(np.float32)


def tones() -> dict[str, np.ndarray]:
    """EBU Tech 3341 (loudness) and 3342 (loudness range) style signals, and a true-peak tone."""
    quarter = {"freq_hz": TONE_RATE_HZ / 4, "phase": np.pi / 4}  # samples 3 dB under the peak
    return {
        "1 kHz -23 dBFS stereo, 20 s (3341 case 1)": sine(dbfs=-23, seconds=20),
        "1 kHz -33 dBFS stereo, 20 s (3341 case 2)": sine(dbfs=-33, seconds=20),
        "-20 then -30 dBFS, 20 s each (3342 case 1)": np.concatenate(
            [sine(dbfs=-20, seconds=20), sine(dbfs=-30, seconds=20)]),
        "-20 then -15 dBFS, 20 s each (3342 case 2)": np.concatenate(
            [sine(dbfs=-20, seconds=20), sine(dbfs=-15, seconds=20)]),
        "fs/4 at 45°, 0 dBTP, 50 ms fade-in, 20 s": sine(dbfs=0, seconds=20, **quarter)
        * fade_in(20 * TONE_RATE_HZ, TONE_RATE_HZ // 20),
        "fs/4 at 45°, 0 dBTP, abrupt start, 5 s": sine(dbfs=0, seconds=5, **quarter),
    }


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
    readings = [r for start in range(0, len(audio), 4096)
                for r in meter.push(audio[start:start + 4096])]
    by_t = {round(r.t_s, 1): r for r in readings}
    common = [t for t in ref["steps"] if t in by_t and t >= 3.0]  # S needs 3 s
    seconds = [t for t in common if t == int(t)]
    last = readings[-1]
    return {
        "ours": {"I": last.integrated_lufs, "LRA": last.range_lu, "TP": last.true_peak_dbtp},
        "ffmpeg": {k: ref[k] for k in ("I", "LRA", "TP")},
        "steps_compared": len(common),
        "steps": len(readings),
        "max_dM": max((abs(by_t[t].momentary_lufs - ref["steps"][t][0]) for t in common),
                      default=0),
        "max_dS": max((abs(by_t[t].short_term_lufs - ref["steps"][t][1]) for t in seconds),
                      default=0),
    }


def main(argv: list[str]) -> int:
    if argv == ["--tones"]:
        signals = [(name, audio, TONE_RATE_HZ) for name, audio in tones().items()]
    else:
        clips = [Path(a) for a in argv] or sorted(
            (REPO / "datasets" / "genres" / "clips").glob("*/*"))
        signals = [(f"{c.parent.name}/{c.stem}", *sf.read(c, dtype="float32", always_2d=True))
                   for c in clips]
    print("| signal | rate, ch | I ours / ffmpeg | LRA ours / ffmpeg | TP ours / ffmpeg | max ΔM "
          "| max ΔS |")
    print("| --- | --- | --- | --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, audio, rate_hz in signals:
            c = compare(audio, rate_hz, Path(tmp))
            o, f = c["ours"], c["ffmpeg"]
            print(f"| {name} | {rate_hz}, {audio.shape[1]} | {o['I']:.2f} / {f['I']:.1f} | "
                  f"{o['LRA']:.2f} / {f['LRA']:.1f} | {o['TP']:.2f} / {f['TP']:.1f} | "
                  f"{c['max_dM']:.2f} | {c['max_dS']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
