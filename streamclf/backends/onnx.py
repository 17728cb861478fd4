"""ONNX Runtime on the CPU: the default engine and the reference the others are checked against.

Session options were measured on the 2-core target (docs/engines.md): all graph optimisations,
the CPU memory arena on (windows have a fixed shape, so the arena is reused, never grown),
sequential execution, and intra-op threads = the cores this process may use, without
spin-waiting so that an idle daemon does not burn the cores its audio threads need.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import structlog

from streamclf.backends.base import (
    INPUT_NAME,
    OUTPUT_NAMES,
    EngineInfo,
    InfoFields,
    check_batch,
    check_model_io,
)
from streamclf.errors import ModelError

log = structlog.get_logger(__name__)


def default_threads() -> int:
    """Cores this process may run on (the cgroup/affinity view, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)))


def session_options(*, threads: int, spin: bool = False, arena: bool = True,
                    mem_pattern: bool = False):
    """The tuned `onnxruntime.SessionOptions`; `spin` and `arena` exist for the measurements,
    `mem_pattern` for graphs that only ever see one input shape."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = arena
    # Memory patterns are planned and kept per input shape: with batches of any size each new
    # shape grew the daemon's memory (docs/engines.md).
    options.enable_mem_pattern = mem_pattern
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3
    return options


def new_run_options():
    """Run options of one engine: setting `terminate` on them ends its call in progress (a
    stopping pipeline) and every later one, with an error, between two nodes."""
    import onnxruntime as ort

    return ort.RunOptions()


def open_session(path: Path, *, threads: int, spin: bool = False, arena: bool = True,
                 mem_pattern: bool = False):
    """An InferenceSession on the CPU; an unreadable model raises ModelError with one line."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(path),
            sess_options=session_options(threads=threads, spin=spin, arena=arena,
                                         mem_pattern=mem_pattern),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # ORT raises its own pybind types (InvalidProtobuf, Fail, …)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"{path}: cannot load ONNX model ({first_line})"
        raise ModelError(msg) from exc


class OnnxEngine(InfoFields):
    """ONNX Runtime CPU session for one model; any batch size up to `max_batch`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_batch: int = 32,
        threads: int | None = None,
        spin: bool = False,
        arena: bool = True,
        reason: str = "",
    ) -> None:
        path = Path(path)
        threads = threads or default_threads()
        self._session = open_session(path, threads=threads, spin=spin, arena=arena)
        self._run_options = new_run_options()
        n_tags, embedding_dim = check_model_io(
            source=str(path),
            inputs=[(i.name, i.shape) for i in self._session.get_inputs()],
            outputs=[(o.name, o.shape) for o in self._session.get_outputs()],
        )
        fixed_batch = self._session.get_inputs()[0].shape[0]
        if isinstance(fixed_batch, int):
            max_batch = min(max_batch, fixed_batch)
        self.info = EngineInfo(
            name="onnxruntime",
            device=f"cpu ({threads} threads)",
            precision="fp32",
            max_batch=max_batch,
            model=path.stem,
            embedding_dim=embedding_dim,
            reason=reason,
            n_tags=n_tags,
        )

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = check_batch(batch, self.info.max_batch)
        outputs = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch}, self._run_options)
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))

    def interrupt(self) -> None:
        self._run_options.terminate = True

    def close(self) -> None:
        self._session = None
