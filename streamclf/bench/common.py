"""What every section of `streamclf bench` shares: the run's context, the model under test,
target checks, and the timing rule (best of repeats)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from streamclf.config import EngineConfig

DEFAULTS = EngineConfig()  # the daemon under test runs the default model and options
MODEL = DEFAULTS.model
MAX_BATCH = DEFAULTS.max_batch  # the daemon's warm-up runs one batch of this size
BLOCK_S = 0.05  # the pipeline's stream workers read about 50 ms per ring read
MIB = 1024 * 1024


@dataclass
class Context:
    """What a section may use: the mode, a scratch folder, the stream audio, earlier results."""

    quick: bool
    workdir: Path
    audio: Path
    results: dict = field(default_factory=dict)
    ready_s: list[float] = field(default_factory=list)  # every daemon start of this run


def check(value: float, target: float, *, at_most: bool = False) -> dict:
    """One target: value, target, ok (≥ target unless `at_most`), in bench_engines' form."""
    ok = value <= target if at_most else value >= target
    return {"value": value, "target": target, "ok": bool(ok), "at_most": at_most}


def best_seconds(fn: Callable[[], object], *, repeats: int) -> float:
    """Shortest wall time of `repeats` calls (the least disturbed by other load)."""
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best
