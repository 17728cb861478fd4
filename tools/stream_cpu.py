"""Where a stream's CPU goes: the real daemon with N looping real-time file streams, measured.

    .venv/bin/python tools/stream_cpu.py --streams 12 --seconds 30 [--profile]

Starts `streamclf serve` on the bundled clip as a 44.1 kHz stereo WAV (what a sound card
delivers: every stream resamples and frames), waits for READY=1 and a warm-up, then reads the
CPU time of each of its threads from /proc over `--seconds`: stream workers, source readers,
the engine worker, ONNX Runtime's own pool threads. With `--profile` the daemon runs a second
time under cProfile with each thread's CPU clock (`time.thread_time`, so waiting costs nothing)
and each function's own time goes to the stage it belongs to (resample, framer, runner,
smoother, loudness, feed, …); time in numpy and other libraries goes to the stage that called
them. cProfile slows the Python-heavy parts, so its shares are a breakdown, and the /proc
figures of the unprofiled run are the cost. `--python` runs another checkout's daemon.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from streamclf.testing.daemon import cpu_by_kind, threads_cpu_s

CLIP = Path(__file__).resolve().parents[1] / "streamclf" / "data" / "clip.ogg"
READY_TIMEOUT_S = 120.0
# (stage, substrings of a function's "name (file:line)"): a function that matches one is that
# stage's; the time of one that matches none (numpy, the standard library, builtins) goes to its
# callers, in the proportions cProfile recorded per caller, until a stage is found.
STAGES = (
    ("feed: messages, msgpack, zmq", ("streamclf/feed/", "zmq/", "msgpack", "genre_message",
                                      "change_message", "status_message", "emit (")),
    ("runner (ONNX Runtime, calling thread)", ("onnxruntime/", "streamclf/backends/")),
    ("resample", ("streamclf/audio/resample.py", "soxr/")),
    ("framer / log-mel", ("streamclf/features/",)),
    ("loudness, levels, alarms", ("streamclf/loudness.py", "streamclf/alarms.py")),
    ("smoother", ("streamclf/smoothing.py",)),
    ("tracks", ("streamclf/tracks.py", "streamclf/boundaries.py")),
    ("outputs, metrics", ("streamclf/outputs/", "streamclf/metrics.py")),
    ("ring", ("streamclf/audio/ring.py",)),
    ("source reading (file decode, pacing)", ("streamclf/audio/sources.py", "soundfile")),
    ("waiting, wake-ups", ("threading.py", "sleep>")),
    ("pipeline loops (Python overhead)", ("streamclf/pipeline.py",)),
)
UNKNOWN = "other"


def stage_of(function: tuple[str, int, str]) -> str | None:
    """The stage of a pstats function key (file, line, name); None when it names none."""
    label = f"{function[2]} ({function[0]}:{function[1]})"
    for stage, marks in STAGES:
        if any(mark in label for mark in marks):
            return stage
    return None


def stage_seconds(stats: dict) -> collections.Counter:
    """pstats' raw `stats` {function: (cc, nc, own_s, cum_s, {caller: (cc, nc, own_s, cum_s)})}
    → own seconds per stage, library time handed up to the callers' stages."""
    shares: dict = {}  # function → {stage: share of its own time}

    def share_of(function) -> dict[str, float]:
        if function in shares:
            return shares[function]
        stage = stage_of(function)
        callers = stats.get(function, (0, 0, 0.0, 0.0, {}))[4]
        total = sum(c[2] for c in callers.values())
        if stage is not None or total <= 0:
            shares[function] = {stage or UNKNOWN: 1.0}
            return shares[function]
        shares[function] = {UNKNOWN: 1.0}  # a call cycle back to here stays unknown
        mixed: collections.Counter = collections.Counter()
        for caller, c in callers.items():
            for name, part in share_of(caller).items():
                mixed[name] += part * c[2] / total
        shares[function] = dict(mixed)
        return shares[function]

    seconds: collections.Counter = collections.Counter()
    for function, (_, _, own_s, _, _) in stats.items():
        for name, part in share_of(function).items():
            seconds[name] += own_s * part
    return seconds


def daemon_config(*, streams: int, hop_s: float, audio: Path, port: int, onair: bool) -> str:
    lines = ["[engine]", 'kind = "onnxruntime"', "[framing]", f"hop_s = {hop_s}",
             "[feed]", f'endpoint = "tcp://127.0.0.1:{port}"', "send_hwm = 10000",
             "[service]", 'log_level = "warning"', 'log_format = "json"', "watchdog = false"]
    if not onair:
        lines += ["[loudness]", "enabled = false", "[content]", "enabled = false"]
    for i in range(streams):
        lines += ["[[streams]]", f'id = "s{i}"', 'source = "file"',
                  f"path = {json.dumps(str(audio))}", "loop = true", "realtime = true"]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(command: list[str], workdir: Path) -> subprocess.Popen:
    """The daemon, returned once it has said READY=1 on a real notify socket."""
    notify_path = workdir / "notify"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(1.0)
    proc = subprocess.Popen(command, env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=(workdir / "serve.log").open("ab"))
    deadline = time.monotonic() + READY_TIMEOUT_S
    with notify:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if b"READY=1" in notify.recv(4096):
                    return proc
            except TimeoutError:
                continue
    proc.kill()
    sys.exit(f"the daemon did not get ready (see {workdir / 'serve.log'})")


def run_daemon(args: argparse.Namespace, workdir: Path, config: Path, *, profile: bool) -> dict:
    """One daemon run: CPU per thread over `--seconds` after READY and `--warmup`."""
    stats_path = workdir / "stats.prof" if profile else ""
    command = [args.python, __file__, "--serve", str(stats_path), "serve", "--config", str(config)]
    proc = start_daemon(command, workdir)
    try:
        time.sleep(args.warmup)
        load = os.getloadavg()[0]
        before, t0 = threads_cpu_s(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        after, elapsed = threads_cpu_s(proc.pid), time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    per_kind = cpu_by_kind(before, after, pid=proc.pid)
    total_s = sum(per_kind.values())
    result = {
        "load_1min": round(load, 1), "seconds": round(elapsed, 1),
        "cpu_percent": round(100 * total_s / elapsed, 1),
        "cpu_percent_per_stream": round(100 * total_s / elapsed / args.streams, 2),
        "threads_cpu_percent": {k: round(100 * v / elapsed, 1) for k, v in per_kind.most_common()},
    }
    if profile:
        seconds = stage_seconds(pstats.Stats(str(workdir / "stats.prof")).stats)
        total = sum(seconds.values())
        result["stage_share_percent"] = {k: round(100 * v / total, 1)
                                         for k, v in seconds.most_common()}
    return result


def serve(stats_path: str, argv: list[str]) -> None:
    """`streamclf serve`, with a `stats_path` each thread it starts under its own cProfile on
    that thread's CPU clock; the threads' stats are written there together when it ends. (The
    daemon names its threads in /proc itself.)"""
    from streamclf import cli

    profiles = []

    def start(*_):
        sys.setprofile(None)
        profiler = cProfile.Profile(time.thread_time)
        profiles.append(profiler)
        profiler.enable()

    if stats_path:
        threading.setprofile(start)
    code = cli.main(argv)
    threading.setprofile(None)
    stats = None
    for profiler in profiles:
        profiler.disable()
        profiler.create_stats()
        if stats is None:
            stats = pstats.Stats(profiler)
        else:
            stats.add(profiler)
    if stats is not None:
        stats.dump_stats(stats_path)
    sys.exit(code)


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:  # the daemon side of a run (run_daemon)
        serve(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=12)
    parser.add_argument("--hop", type=float, default=1.0, help="seconds between windows")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to measure")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after READY first")
    parser.add_argument("--profile", action="store_true",
                        help="a second run under cProfile: the share of each stage")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter whose streamclf runs (another checkout's venv)")
    parser.add_argument("--no-onair", dest="onair", action="store_false",
                        help="loudness, level alarms and content off (the genre alone)")
    args = parser.parse_args()
    if args.streams < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--streams must be at least 1, --seconds positive, --warmup not negative")
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="stream-cpu-") as tmp:
        workdir = Path(tmp)
        audio, rate = sf.read(CLIP, dtype="float32", always_2d=True)
        sf.write(workdir / "clip.wav", audio, rate, subtype="FLOAT")
        config = workdir / "serve.toml"
        config.write_text(daemon_config(streams=args.streams, hop_s=args.hop,
                                        audio=workdir / "clip.wav", port=free_port(),
                                        onair=args.onair))
        report = {"streams": args.streams, "hop_s": args.hop, "onair": args.onair,
                  "run": run_daemon(args, workdir, config, profile=False)}
        if args.profile:
            report["profiled_run"] = run_daemon(args, workdir, config, profile=True)
        json.dump(report, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
