"""The incremental runner's memory and speed under a daemon-like mix of batches, faster than
real time: RSS every 300 windows, and the mean time per window.

Two streams at the default 1 s hop (62 frames); 85 % of the calls carry one window, 12 % one of
each stream, 3 % 3–8 windows, and now and then a stream jumps (its ring restarts). This is the
measurement behind "one input shape per graph" in docs/engines.md:

    python tools/runner_memory.py --windows 2500

The process RSS includes the harness's own input (two random log-mel streams, ~190 MB).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from incremental_helpers import window_at

from streamclf.backends.runner import load_runner
from streamclf.config import EngineConfig
from streamclf.features.framer import Window
from streamclf.features.mel import WINDOW_FRAMES, frames_for_seconds
from streamclf.logs import configure_logging

HOP = frames_for_seconds(1.0)
STREAM_WINDOWS = 4000


def rss_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=2500)
    parser.add_argument("--model", default="fused_musicnn")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=EngineConfig().max_batch)
    args = parser.parse_args(argv)
    configure_logging("warning")
    runner = load_runner(args.model, "onnxruntime", hop_frames=HOP, max_batch=args.max_batch,
                         threads=args.threads)
    runner.warmup()
    rng = np.random.default_rng(0)
    length = WINDOW_FRAMES + HOP * STREAM_WINDOWS
    audio = {s: rng.standard_normal((length, 96), dtype=np.float32) for s in "ab"}
    position = dict.fromkeys(audio, 0)

    def window(stream: str) -> tuple[str, Window]:
        k = position[stream] % STREAM_WINDOWS
        position[stream] += 1
        return stream, window_at(audio[stream], k * HOP, k)

    done, busy_s, next_report = 0, 0.0, 300
    while done < args.windows:
        u = rng.random()
        if u < 0.85:
            items = [window("ab"[done % 2])]
        elif u < 0.97:
            items = [window("a"), window("b")]
        else:
            items = [window("ab"[i % 2]) for i in range(int(rng.integers(3, 9)))]
        if rng.random() < 0.003:
            position["a"] += int(rng.integers(2, 50))  # a jump: stream a's ring restarts
        started = time.perf_counter()
        runner.run(items)
        busy_s += time.perf_counter() - started
        done += len(items)
        if done >= next_report:
            print(f"windows {done:5d}  rss {rss_mib():7.1f} MiB  "
                  f"{busy_s * 1000 / done:6.2f} ms/window", flush=True)
            next_report += 300
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
