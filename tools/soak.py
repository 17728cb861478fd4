"""Soak: the daemon streams in real time for a long while; RSS, seq gaps and drops are recorded.

Two streams at once, as in docs/reliability.md: the bundled clip as a looped, real-time file
stream, and a device stream captured through PulseAudio (a private server whose null sink plays
the clip over and over). A subscriber records the whole feed; the daemon's RSS is sampled every
few seconds into a CSV. The daemon is stopped with SIGTERM at the end, which must be clean too.

    python tools/soak.py --minutes 30 --csv docs/soak-rss.csv      # the numbers in the doc
    pytest tests/test_reliability_soak.py [--soak]                 # 2 min (30 min with --soak)

It runs the daemon through the package's harness (streamclf.testing) and the PulseAudio helper
of the tests (tests/audio_helpers.py), so the tool and the tests run the very same procedure.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from audio_helpers import CLIP_PATH, PulseServer, require_pulseaudio
from reliability_helpers import t1_steps_missing

from streamclf.feed.schema import GenreMessage
from streamclf.testing.daemon import START_TIMEOUT_S, Daemon, write_config
from streamclf.testing.feed import FeedRecorder

STREAMS = ("file", "device")
HOP_S = 0.992  # 62 STFT frames: the default 1 s hop as the framer realises it
STATUS_INTERVAL_S = 2.0


@dataclass
class StreamOutcome:
    windows_published: int
    windows_missing_by_t1: int  # gaps in stream time between consecutive genre messages
    dropped_windows: int  # the daemon's own count (queue drops + engine failures)
    ring_overruns: int
    xruns: int
    device_state: str


@dataclass
class SoakResult:
    duration_s: float
    warmup_s: float
    rss_warmup_mib: float
    rss_final_mib: float
    rss_max_after_warmup_mib: float
    seq_gaps: dict
    subscriber_lost: int
    exit_code: int
    exit_s: float
    final_status_seen: bool
    streams: dict[str, StreamOutcome] = field(default_factory=dict)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (elapsed s, RSS MiB)

    @property
    def rss_growth_mib(self) -> float:
        return self.rss_final_mib - self.rss_warmup_mib

    def unexplained_drops(self) -> dict[str, int]:
        """Per stream, windows missing from the feed that the daemon did not count as dropped."""
        return {name: s.windows_missing_by_t1 - s.dropped_windows
                for name, s in self.streams.items()
                if s.windows_missing_by_t1 != s.dropped_windows}


class _LoopPlayer:
    """Plays the clip into the null sink again each time it ends (a device that never stops)."""

    def __init__(self, pulse: PulseServer) -> None:
        self._pulse = pulse
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-player", daemon=True)

    def _run(self) -> None:
        while not self._stopping.is_set():
            player = self._pulse.play(CLIP_PATH)
            while player.poll() is None and not self._stopping.wait(0.2):
                pass

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(5)


def run_soak(*, duration_s: float, pulse: PulseServer, workdir: Path, warmup_s: float,
             sample_s: float = 5.0, csv_path: Path | None = None,
             progress=lambda _line: None) -> SoakResult:
    """Stream for ``duration_s`` after the first window; RSS growth is counted from ``warmup_s``."""
    cfg = write_config(workdir, streams=[
        {"id": "file", "source": "file", "path": str(CLIP_PATH), "loop": True},
        {"id": "device", "source": "device", "device": "pulse"},
    ], feed={"status_interval_s": STATUS_INTERVAL_S})  # fmt: skip
    rows: list[list[float]] = []
    with _LoopPlayer(pulse), FeedRecorder(cfg.endpoint) as feed, \
            Daemon(cfg, env=pulse.env) as daemon:  # fmt: skip
        if not feed.wait(lambda: all(feed.genre_count(s) for s in STREAMS),
                         timeout_s=START_TIMEOUT_S):
            msg = f"no windows from both streams; daemon log: {daemon.log_path}"
            raise RuntimeError(msg)
        started = time.monotonic()
        next_sample = started
        while (elapsed := time.monotonic() - started) < duration_s:
            if daemon.proc.poll() is not None:
                msg = f"daemon exited with {daemon.proc.returncode}; log: {daemon.log_path}"
                raise RuntimeError(msg)
            if time.monotonic() >= next_sample:
                row = _sample(elapsed, daemon, feed)
                rows.append(row)
                progress(", ".join(f"{k} {v:g}" for k, v in zip(CSV_COLUMNS, row, strict=True)))
                next_sample += sample_s
            time.sleep(0.2)
        rows.append(_sample(time.monotonic() - started, daemon, feed))
        exit_code, exit_s = daemon.terminate()
    if csv_path is not None:
        with Path(csv_path).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows([[round(v, 3) for v in row] for row in rows])
    return _outcome(rows, feed, duration_s=duration_s, warmup_s=warmup_s,
                    exit_code=exit_code, exit_s=exit_s)


CSV_COLUMNS = ("elapsed_s", "rss_mib", "windows_file", "windows_device", "dropped_file",
               "dropped_device", "subscriber_lost")


def _sample(elapsed: float, daemon: Daemon, feed: FeedRecorder) -> list[float]:
    status = {s: feed.last_status(s) for s in STREAMS}
    return [elapsed, daemon.rss_mb(), feed.genre_count("file"), feed.genre_count("device"),
            status["file"].dropped_windows if status["file"] else 0,
            status["device"].dropped_windows if status["device"] else 0, feed.lost]


def _outcome(rows, feed: FeedRecorder, *, duration_s: float, warmup_s: float, exit_code: int,
             exit_s: float) -> SoakResult:
    elapsed = np.array([r[0] for r in rows])
    rss = np.array([r[1] for r in rows])
    after = elapsed >= warmup_s
    # the median of three samples on either side, so one allocator hiccup is not "growth"
    at_warmup = float(np.median(rss[after][:3])) if after.any() else float(rss[-1])
    final = float(np.median(rss[-3:]))
    streams = {}
    for name in STREAMS:
        status = feed.final_status(name) or feed.last_status(name)
        genre = feed.of(GenreMessage, name)
        streams[name] = StreamOutcome(
            windows_published=len(genre),
            windows_missing_by_t1=t1_steps_missing(genre, HOP_S),
            dropped_windows=status.dropped_windows if status else -1,
            ring_overruns=status.ring_overruns if status else -1,
            xruns=status.xruns if status else -1,
            device_state=status.device_state if status else "?",
        )
    return SoakResult(
        duration_s=duration_s, warmup_s=warmup_s, rss_warmup_mib=at_warmup, rss_final_mib=final,
        rss_max_after_warmup_mib=float(rss[after].max()) if after.any() else float(rss.max()),
        seq_gaps=feed.seq_gaps(), subscriber_lost=feed.lost, exit_code=exit_code, exit_s=exit_s,
        final_status_seen=all(feed.final_status(s) is not None for s in STREAMS),
        streams=streams, samples=list(zip(elapsed.tolist(), rss.tolist(), strict=True)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before RSS counts")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--csv", type=Path, help="write RSS and counters over time here")
    args = parser.parse_args(argv)
    require_pulseaudio()
    with tempfile.TemporaryDirectory(prefix="soak") as tmp:
        pulse = PulseServer(Path(tmp) / "xdg")
        pulse.start()
        try:
            result = run_soak(duration_s=args.minutes * 60, pulse=pulse, workdir=Path(tmp),
                              warmup_s=args.warmup, sample_s=args.sample, csv_path=args.csv,
                              progress=lambda line: print(line, flush=True))
        finally:
            pulse.stop()
    summary = asdict(result) | {"rss_growth_mib": result.rss_growth_mib,
                                "unexplained_drops": result.unexplained_drops()}
    summary.pop("samples")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
