"""`streamclf bench`, on-air section: the CPU cost of the loudness stage per stream.

The stage (libebur128 momentary/short-term/integrated/range + 4x true peak, then the level
alarms) runs on each stream worker on the source's own audio, so it is measured the way the
worker feeds it: 50 ms blocks of the bench's stream audio (the bundled clip at its own rate and
channels), on one core, and set beside what a whole stream costs the running daemon (the
capacity section's CPU per stream, which already includes it).
"""

from __future__ import annotations

import time

import soundfile as sf

from streamclf.alarms import LevelStage
from streamclf.config import AlarmsConfig
from streamclf.loudness import LoudnessMeter

TARGET_SHARE_OF_STREAM = 0.15  # the budget for the on-air stages


def loudness_seconds(audio, rate_hz: int, *, block_s: float) -> float:
    """Seconds of one core to push `audio` through a fresh LevelStage in `block_s` blocks."""
    stage = LevelStage(LoudnessMeter(rate_hz, audio.shape[1]), AlarmsConfig())
    block = int(block_s * rate_hz)
    started = time.process_time()
    for start in range(0, len(audio), block):
        for _ in stage.push(audio[start:start + block]):
            pass
    return time.process_time() - started


def bench_onair(ctx, *, block_s: float, repeats: int, check) -> dict:
    audio, rate_hz = sf.read(ctx.audio, dtype="float32", always_2d=True)
    audio_s = len(audio) / rate_hz
    seconds = min(loudness_seconds(audio, rate_hz, block_s=block_s) for _ in range(repeats))
    percent = 100.0 * seconds / audio_s  # % of one core per real-time stream
    stream_percent = ctx.results.get("capacity", {}).get("cpu_percent_per_stream")
    result = {"audio_s": audio_s, "rate_hz": rate_hz, "channels": audio.shape[1],
              "block_s": block_s, "loudness_cpu_percent": percent,
              "stream_cpu_percent": stream_percent, "checks": {}}
    if stream_percent:
        share = percent / max(stream_percent - percent, 1e-9)
        result["share_of_stream"] = share
        result["checks"]["onair_share_of_stream"] = check(share, TARGET_SHARE_OF_STREAM,
                                                          at_most=True)
    return result


def render_onair(r: dict) -> str:
    lines = [
        (f"The loudness stage (EBU R128 via libebur128, true peak, level alarms) on the stream "
         f"audio ({r['audio_s']:.1f} s, {r['rate_hz']} Hz, {r['channels']} channels) in "
         f"{1e3 * r['block_s']:g} ms blocks, process CPU time, best of the repeats."),
        "",
        f"- loudness stage: {r['loudness_cpu_percent']:.2f} % of one core per real-time stream",
    ]
    if r.get("share_of_stream") is not None:
        lines.append(
            f"- a whole stream in the running daemon (the capacity section, loudness included): "
            f"{r['stream_cpu_percent']:.1f} % of a core; the loudness stage is "
            f"{100 * r['share_of_stream']:.0f} % of the rest of the stream's cost")
    return "\n".join(lines) + "\n"
