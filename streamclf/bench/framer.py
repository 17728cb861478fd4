"""`streamclf bench`, section 1: the streaming log-mel framer against librosa, on one core.

The floor is the FFT and mel arithmetic per second of audio over one core's sgemm rate, both
measured in the same run.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import numpy as np

from streamclf.audio.files import BUNDLED_CLIP as CLIP
from streamclf.bench.common import BLOCK_S, Context, best_seconds, check
from streamclf.features.mel import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE_HZ, frames_for_seconds

FRAMER_HOPS_S = (1.0, 0.25)
TARGET_FRAMER_REALTIME = 1000.0
TARGET_FRAMER_HOP_SCALING = 0.5  # per-window cost at hop 0.25 s / at 1 s; O(hop) gives 0.25


@contextlib.contextmanager
def one_core() -> Iterator[int]:
    """Pin every thread of this process (BLAS helpers included) to one CPU, then restore."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, {cpu})
    try:
        yield cpu
    finally:
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)


def stream_framer(y: np.ndarray, *, hop_s: float, block: int) -> int:
    """Push `y` through a fresh LogMelFramer in blocks of `block` samples; windows emitted."""
    from streamclf.features.framer import LogMelFramer

    framer = LogMelFramer(hop_frames=frames_for_seconds(hop_s))
    n = 0
    for i in range(0, y.shape[0], block):
        n += sum(1 for _ in framer.push(y[i : i + block]))
    return n


def librosa_logmel(y: np.ndarray) -> np.ndarray:
    """musicnn's front end with librosa itself: mel power, then log10(10000 x + 1)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=SAMPLE_RATE_HZ, n_fft=N_FFT, hop_length=HOP_LENGTH,
                                         n_mels=N_MELS)
    return np.log10(10000.0 * mel + 1.0)


def naive_librosa(y: np.ndarray, *, hop_s: float) -> int:
    """The naive streaming way: at every hop, librosa over the last 3 s again; windows emitted."""
    span = (frames_for_seconds(3.0) - 1) * HOP_LENGTH  # 187 centred frames
    hop = frames_for_seconds(hop_s) * HOP_LENGTH
    n = 0
    for end in range(span, y.shape[0] + 1, hop):
        librosa_logmel(y[end - span : end])
        n += 1
    return n


def framer_flops_per_audio_s() -> float:
    """FFT and mel work per second of audio: a real FFT ≈ 2.5 N log2 N, window and power 4 per
    bin, the mel product 2 · bins · mels (dense, as computed), the log 3 per mel."""
    bins = N_FFT // 2 + 1
    per_frame = 2.5 * N_FFT * math.log2(N_FFT) + N_FFT + 3 * bins + 2 * bins * N_MELS + 3 * N_MELS
    return per_frame * SAMPLE_RATE_HZ / HOP_LENGTH


def bench_framer(ctx: Context) -> dict:
    from streamclf.bench.engines import sgemm_gflops
    from streamclf.features.framer import load_mono_16k
    from streamclf.features.mel import logmel

    y = load_mono_16k(CLIP)
    if ctx.quick:
        y = y[: 6 * SAMPLE_RATE_HZ]
    audio_s = y.shape[0] / SAMPLE_RATE_HZ
    repeats = 1 if ctx.quick else 3
    rows: dict[str, dict] = {}

    def row(name: str, seconds: float, windows: int | None = None) -> None:
        rows[name] = {"seconds": seconds, "x_realtime": audio_s / seconds, "windows": windows,
                      "us_per_window": 1e6 * seconds / windows if windows else None}

    with one_core() as cpu:
        sgemm_1core = sgemm_gflops(min_time_s=0.2 if ctx.quick else 0.5)
        for hop_s, block_s in ((1.0, BLOCK_S), (0.25, BLOCK_S), (1.0, 1.0)):
            size = int(block_s * SAMPLE_RATE_HZ)
            windows = stream_framer(y, hop_s=hop_s, block=size)
            row(f"framer_hop_{hop_s:g}s_block_{1e3 * block_s:g}ms", best_seconds(
                lambda h=hop_s, b=size: stream_framer(y, hop_s=h, block=b), repeats=repeats),
                windows)
        row("offline_logmel", best_seconds(lambda: logmel(y), repeats=repeats))
        try:
            import librosa  # noqa: F401
        except ImportError:
            librosa_note = "librosa is not installed (dev extra): its comparisons were skipped"
        else:
            librosa_note = None
            librosa_logmel(y[: SAMPLE_RATE_HZ])  # first call builds librosa's caches
            row("librosa_whole_file", best_seconds(lambda: librosa_logmel(y), repeats=repeats))
            for hop_s in FRAMER_HOPS_S:
                windows = naive_librosa(y, hop_s=hop_s)
                row(f"librosa_naive_hop_{hop_s:g}s", best_seconds(
                    lambda h=hop_s: naive_librosa(y, hop_s=h), repeats=repeats), windows)
    framer = rows["framer_hop_1s_block_50ms"]
    ratios = {name: framer["x_realtime"] / r["x_realtime"] for name, r in rows.items()
              if name.startswith("librosa")}
    flops = framer_flops_per_audio_s()
    scaling = rows["framer_hop_0.25s_block_50ms"]["us_per_window"] / framer["us_per_window"]
    return {
        "audio_s": audio_s,
        "cpu": cpu,
        "rows": rows,
        "speedup_vs": ratios,
        "librosa_note": librosa_note,
        "floor": {"flops_per_audio_s": flops, "sgemm_gflops_1core": sgemm_1core,
                  "x_realtime_ceiling": sgemm_1core * 1e9 / flops},
        "checks": {
            "framer_x_realtime": check(framer["x_realtime"], TARGET_FRAMER_REALTIME),
            "framer_window_cost_hop_0.25s_vs_1s": check(scaling, TARGET_FRAMER_HOP_SCALING,
                                                          at_most=True),
        },
    }


def render_framer(r: dict) -> str:
    lines = [
        (f"The bundled clip ({r['audio_s']:.1f} s, 16 kHz), all threads pinned to CPU {r['cpu']}, "
         "best of the repeats. The streaming framer gets 50 ms blocks (what the pipeline's ring "
         "reads give it; the target is checked here) or 1 s blocks; the naive way recomputes "
         "librosa over the last 3 s at every hop."),
        "",
        "| front end | × real time | µs per window | windows |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in r["rows"].items():
        per = f"{row['us_per_window']:.0f}" if row["us_per_window"] else "–"
        lines.append(f"| {name} | {row['x_realtime']:.0f} | {per} | {row['windows'] or '–'} |")
    lines.append("")
    for name, ratio in r["speedup_vs"].items():
        lines.append(f"- streaming framer (hop 1 s, 50 ms blocks) / {name}: {ratio:.1f}× the speed")
    if r["librosa_note"]:
        lines.append(f"- {r['librosa_note']}")
    floor = r["floor"]
    lines.append(
        f"- floor: {floor['flops_per_audio_s'] / 1e6:.2f} MFLOP of FFT and mel work per second of "
        f"audio at one core's sgemm rate ({floor['sgemm_gflops_1core']:.0f} GFLOP/s) allows "
        f"{floor['x_realtime_ceiling']:.0f}× real time; the rest is numpy call overhead per "
        "block, which is why larger blocks are faster."
    )
    return "\n".join(lines) + "\n"
