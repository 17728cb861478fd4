"""Capacity trials at chosen stream counts: the trial of `streamclf bench`'s capacity section
(the real daemon, N real-time file streams at hop 1 s, a subscriber), without the search.

    .venv/bin/python tools/capacity_trial.py --streams 24 30 33 --seconds 15 --repeats 2

For A/B comparisons of two checkouts on one machine, run it with `PYTHONPATH=<checkout>`
alternately; each trial prints one JSON line (streams, sustained, p99 ms, CPU %, load).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from streamclf.bench.common import Context
from streamclf.bench.daemon_sections import CAPACITY_SETTLE_S, capacity_trial
from streamclf.bench.report import stream_audio

SHOWN = ("streams", "runner", "sustained", "e2e_p99_ms", "latency_growth_s_per_s", "start_p99_ms",
         "cpu_percent", "cpu_percent_per_stream", "dropped_windows", "ring_overrun_samples")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", required=True, help="stream counts")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured per trial")
    parser.add_argument("--settle", type=float, default=CAPACITY_SETTLE_S,
                        help="seconds after every stream has published, before measuring")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the counts")
    parser.add_argument("--no-onair", dest="onair", action="store_false",
                        help="loudness, level alarms and content off (the genre alone)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        workdir = Path(tmp)
        ctx = Context(quick=False, workdir=workdir, audio=stream_audio(workdir))
        for _ in range(args.repeats):
            for streams in args.streams:
                trial = capacity_trial(ctx, streams, measure_s=args.seconds, settle_s=args.settle,
                                       onair=args.onair)
                row = {key: trial[key] for key in SHOWN}
                row["load_1min"] = round(os.getloadavg()[0], 2)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
