"""tools/stream_cpu.py: cProfile's own times sorted into the daemon's stages."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from e2e_helpers import REPO


def _load_tool():
    spec = importlib.util.spec_from_file_location("stream_cpu", REPO / "tools" / "stream_cpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["stream_cpu"] = module
    spec.loader.exec_module(module)
    return module


sc = _load_tool()
FRAMER = ("/x/streamclf/features/framer.py", 120, "push")
RESAMPLER = ("/x/streamclf/audio/resample.py", 60, "push")
WORKER = ("/x/streamclf/pipeline.py", 140, "run")
CONCAT = ("~", 0, "<built-in method numpy.concatenate>")
WRAPPER = ("/x/numpy/_core/shape_base.py", 10, "stack")


def _entry(own_s: float, callers: dict) -> tuple:
    return (1, 1, own_s, own_s, callers)


class TestStageSeconds:
    """A stage's own time counts for it; library time goes to its callers' stages, split as
    cProfile recorded it per caller, through library wrappers and call cycles alike."""

    def test_library_time_split_between_callers(self):
        stats = {
            FRAMER: _entry(1.0, {WORKER: (1, 1, 1.0, 1.0)}),
            RESAMPLER: _entry(0.5, {WORKER: (1, 1, 0.5, 0.5)}),
            WORKER: _entry(0.25, {}),
            CONCAT: _entry(2.0, {FRAMER: (1, 1, 1.5, 1.5), RESAMPLER: (1, 1, 0.5, 0.5)}),
        }
        seconds = sc.stage_seconds(stats)
        assert seconds["framer / log-mel"] == pytest.approx(2.5)
        assert seconds["resample"] == pytest.approx(1.0)
        assert seconds["pipeline loops (Python overhead)"] == pytest.approx(0.25)

    def test_through_a_wrapper_and_a_cycle(self):
        stats = {
            FRAMER: _entry(0.0, {}),
            WRAPPER: _entry(1.0, {FRAMER: (1, 1, 1.0, 1.0), CONCAT: (1, 1, 1.0, 1.0)}),
            CONCAT: _entry(2.0, {WRAPPER: (1, 1, 2.0, 2.0)}),
        }
        seconds = sc.stage_seconds(stats)
        assert sum(seconds.values()) == pytest.approx(3.0)
        assert seconds["framer / log-mel"] > 0 and set(seconds) <= {"framer / log-mel", "other"}

    def test_no_caller_and_no_stage_is_other(self):
        assert sc.stage_seconds({CONCAT: _entry(1.0, {})}) == {"other": 1.0}

