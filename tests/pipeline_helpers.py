"""A real Pipeline (no feed socket) whose runner is wrapped by a recorder, for tests that check
which windows and resets reach the runner."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from streamclf.config import load_config
from streamclf.pipeline import Pipeline


@contextlib.contextmanager
def recorded_pipeline(config_path: Path, recorder: Callable) -> Iterator[tuple[Pipeline, object]]:
    """Start the pipeline of `config_path` with its runner wrapped by `recorder(runner)`; yield
    (pipeline, the recorder); stop it on the way out."""
    recorders: list = []

    def wrap(runner):
        recorders.append(recorder(runner))
        return recorders[0]

    pipeline = Pipeline(load_config(config_path), publish=False, runner_wrapper=wrap)
    pipeline.start()
    try:
        yield pipeline, recorders[0]
    finally:
        pipeline.stop()
