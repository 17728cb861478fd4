"""`streamclf bench`, on-air section: the CPU cost of the loudness and content stages per stream.

Both run on each stream worker, so they are measured the way the worker feeds them, in 50 ms
blocks, on one core: the loudness stage (libebur128 momentary/short-term/integrated/range + 4x
true peak, then the level alarms) on the bench's stream audio at its own rate and channels, the
content stage's voice-activity model (Silero VAD, every 32 ms chunk) on the same audio
resampled to 16 kHz mono as the framer gets it. Both are set beside what a whole stream costs
the running daemon (the capacity section's CPU per stream, which already includes them).
"""

from __future__ import annotations

import time

import numpy as np
import soundfile as sf

from streamclf.alarms import LevelStage
from streamclf.audio.resample import Resampler
from streamclf.config import AlarmsConfig
from streamclf.content import SileroVad, VoiceActivity
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


def content_seconds(audio_16k, *, block_s: float) -> float:
    """Seconds of one core to push 16 kHz mono `audio_16k` through a fresh VoiceActivity."""
    voice = VoiceActivity(SileroVad())
    block = int(block_s * 16000)
    started = time.process_time()
    for start in range(0, len(audio_16k), block):
        voice.push(audio_16k[start:start + block])
    return time.process_time() - started


def bench_onair(ctx, *, block_s: float, repeats: int, check) -> dict:
    audio, rate_hz = sf.read(ctx.audio, dtype="float32", always_2d=True)
    audio_s = len(audio) / rate_hz
    resampler = Resampler(rate_hz, audio.shape[1])
    audio_16k = np.concatenate([resampler.push(audio), resampler.flush()])
    loudness = min(loudness_seconds(audio, rate_hz, block_s=block_s) for _ in range(repeats))
    content = min(content_seconds(audio_16k, block_s=block_s) for _ in range(repeats))
    loudness_percent = 100.0 * loudness / audio_s  # % of one core per real-time stream
    content_percent = 100.0 * content / audio_s
    percent = loudness_percent + content_percent
    stream_percent = ctx.results.get("capacity", {}).get("cpu_percent_per_stream")
    result = {"audio_s": audio_s, "rate_hz": rate_hz, "channels": audio.shape[1],
              "block_s": block_s, "loudness_cpu_percent": loudness_percent,
              "content_cpu_percent": content_percent, "stream_cpu_percent": stream_percent,
              "checks": {}}
    if stream_percent:
        share = percent / max(stream_percent - percent, 1e-9)
        result["share_of_stream"] = share
        result["checks"]["onair_share_of_stream"] = check(share, TARGET_SHARE_OF_STREAM,
                                                          at_most=True)
    return result


def render_onair(r: dict) -> str:
    lines = [
        (f"The loudness stage (EBU R128 via libebur128, true peak, level alarms) on the stream "
         f"audio ({r['audio_s']:.1f} s, {r['rate_hz']} Hz, {r['channels']} channels) and the "
         f"content stage's voice-activity model on it at 16 kHz mono, in "
         f"{1e3 * r['block_s']:g} ms blocks, process CPU time, best of the repeats."),
        "",
        f"- loudness stage: {r['loudness_cpu_percent']:.2f} % of one core per real-time stream",
        (f"- content stage (Silero VAD): {r['content_cpu_percent']:.2f} % of one core per "
         f"real-time stream"),
    ]
    if r.get("share_of_stream") is not None:
        lines.append(
            f"- a whole stream in the running daemon (the capacity section, both stages "
            f"included): {r['stream_cpu_percent']:.1f} % of a core; the two stages are "
            f"{100 * r['share_of_stream']:.0f} % of the rest of the stream's cost (target "
            f"≤ {100 * TARGET_SHARE_OF_STREAM:.0f} %)")
    return "\n".join(lines) + "\n"
