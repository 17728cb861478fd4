"""`streamclf bench`: framer throughput, engines, end-to-end latency, capacity, memory, start-up.

Everything is measured on the machine it runs on, in one run, against a floor computed in the
same run (FLOPs over the measured matrix-multiply rate, the interpreter's own start and an ONNX
Runtime session's own memory). The daemon parts run the real `streamclf serve` as a subprocess
through the daemon harness (`streamclf.testing`), with a generated config (file streams paced
in real time from the bundled clip), a real $NOTIFY_SOCKET datagram socket for READY and a real
subscriber on loopback.

Sections run in the order of `SECTIONS`; each measures into a dict (with its `checks`, the
targets) and renders a markdown section. A later section sees earlier results. The sections
live in `framer`, `inference` and `daemon_sections`; this module runs them and renders the page.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from streamclf.audio.files import BUNDLED_CLIP as CLIP
from streamclf.bench.common import BLOCK_S, DEFAULTS, MODEL, Context, check
from streamclf.bench.daemon_sections import (
    bench_capacity,
    bench_daemon,
    bench_end_to_end,
    render_capacity,
    render_daemon,
    render_end_to_end,
)
from streamclf.bench.framer import bench_framer, render_framer
from streamclf.bench.inference import (
    bench_engine_section,
    bench_incremental_section,
    render_engine_section,
    render_incremental_section,
)
from streamclf.bench.onair import bench_onair, render_onair

log = structlog.get_logger(__name__)


# -- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    measure: Callable[[Context], dict]
    render: Callable[[dict], str]


SECTIONS: list[Section] = [
    Section("framer", "Framer throughput (one core)", bench_framer, render_framer),
    Section("engines", "Engines", bench_engine_section, render_engine_section),
    Section("incremental", "Incremental inference", bench_incremental_section,
            render_incremental_section),
    Section("end_to_end", "End to end: ring → subscriber", bench_end_to_end, render_end_to_end),
    Section("capacity", "Capacity: concurrent real-time streams", bench_capacity, render_capacity),
    Section("onair", "On-air stages: loudness, alarms and content per stream",
            lambda ctx: bench_onair(ctx, block_s=BLOCK_S, repeats=1 if ctx.quick else 3,
                                    check=check), render_onair),
    Section("daemon", "Memory and start-up", bench_daemon, render_daemon),
]


def stream_audio(workdir: Path) -> Path:
    """The clip as a WAV at its own rate and channels: the streams then cost what a device's
    would (resampling, framing) without an Ogg decoder per stream."""
    import soundfile as sf

    audio, rate = sf.read(CLIP, dtype="float32", always_2d=True)
    path = workdir / "clip.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    return path


def machine() -> dict:
    import onnxruntime

    return {"cpu": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "load_at_start": os.getloadavg(),
            "model": MODEL, "incremental": DEFAULTS.incremental}


def measure(*, quick: bool) -> dict:
    """Run every section; a JSON-able dict keyed by section name, plus machine and checks."""
    started = time.monotonic()
    report = {"command": "streamclf bench" + (" --quick" if quick else ""), "quick": quick,
              "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="streamclf-bench-") as tmp:
        ctx = Context(quick=quick, workdir=Path(tmp), audio=stream_audio(Path(tmp)))
        for section in SECTIONS:
            t0 = time.monotonic()
            log.info("bench_section", section=section.name)
            ctx.results[section.name] = section.measure(ctx)
            ctx.results[section.name]["seconds"] = time.monotonic() - t0
    report["machine"]["load_at_end"] = os.getloadavg()
    report["seconds"] = time.monotonic() - started
    report |= ctx.results
    report["checks"] = {name: verdict for s in SECTIONS
                        for name, verdict in ctx.results[s.name].get("checks", {}).items()}
    return report


def render(report: dict) -> str:
    """The whole report as markdown: machine and load, each section, then the targets."""
    m = report["machine"]
    start, end = m["load_at_start"], m["load_at_end"]
    lines = [
        (f"Measured with `{report['command']}` (`--json` for machines, "
         f"`--write docs/benchmarks.md` writes this page) in {report['seconds']:.0f} s on "
         f"{m['cpu']}, {m['cores']} cores, "
         f"Python {m['python']}, numpy {m['numpy']}, onnxruntime {m['onnxruntime']}; model "
         f"`{m['model']}`, the daemon with the default config (incremental inference "
         f"{'on' if m['incremental'] else 'off'}) on the CPU engine. Load average "
         f"(1/5/15 min) {start[0]:.1f}/{start[1]:.1f}/{start[2]:.1f} at the start and "
         f"{end[0]:.1f}/{end[1]:.1f}/{end[2]:.1f} at the end: other work on the machine slows "
         "every figure."),
        "",
    ]
    for i, section in enumerate(SECTIONS, 1):
        lines += [f"## {i}. {section.title}", "", section.render(report[section.name])]
    lines += ["## Targets (CPU engine)", "",
              "| target | measured | limit | |", "| --- | ---: | ---: | --- |"]
    for name, verdict in report["checks"].items():
        op = "≤" if verdict.get("at_most") else "≥"
        lines.append(f"| {name} | {verdict['value']:.3g} | {op} {verdict['target']:.3g} | "
                     + ("met" if verdict["ok"] else "**missed**") + " |")
    return "\n".join(lines) + "\n"


def _json_safe(value):
    """Non-finite floats become None (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


BEGIN_MARK = "<!-- streamclf bench: begin (generated) -->"
END_MARK = "<!-- streamclf bench: end -->"


def write_report(path: Path, markdown: str) -> None:
    """Write the measured part between the markers, keeping hand-written text around them (the
    reading of the numbers); a file without the markers is replaced whole."""
    generated = f"{BEGIN_MARK}\n{markdown}{END_MARK}\n"
    old = path.read_text() if path.is_file() else ""
    if BEGIN_MARK in old and END_MARK in old:
        head, rest = old.split(BEGIN_MARK, 1)
        generated = head + generated + rest.split(END_MARK, 1)[1].removeprefix("\n")
    else:
        generated = "# Benchmarks\n\n" + generated
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generated)


def run(args) -> int:
    """Entry point of `streamclf bench`."""
    report = measure(quick=args.quick)
    markdown = render(report)
    if args.write:
        write_report(args.write, markdown)
    if args.json:
        json.dump(_json_safe(report), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(markdown)
    return 0
