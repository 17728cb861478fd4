"""Incremental inference: musicnn's per-frame work done once per frame, not once per window.

With a 3 s window and a 1 s hop every frame would pass through the network three times. The
split graphs (`streamclf.train.split`) separate the timbral blocks, whose features for a frame
need only the 7 frames around it, from the per-window rest. `IncrementalRunner` keeps, per
stream, a ring of those features keyed by absolute frame index (`Window.start_frame`), computes
only the frames it has not seen (batched over windows and streams, as 7-frame patches), and
runs the window graph on the assembled window — which also recomputes the 3 + 3 edge frames
where the window's zero padding enters. Its outputs equal full-window inference (≤ 1e-5).

Reuse is trusted only when it is provably the same audio: the window must not start before the
stream's previous window, must overlap it (no gap), and the overlapping log-mel must be equal;
otherwise that stream's ring restarts. `streamclf.backends.runner.load_runner` returns it where
the model and engine allow, else a full-window runner with the same `run()`.
Runtime code: onnxruntime and numpy, no torch.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from streamclf.backends.base import DEFAULT_MAX_BATCH, OUTPUT_NAMES, EngineInfo, new_batch_buffer
from streamclf.errors import ModelError
from streamclf.features.framer import Window
from streamclf.features.mel import N_MELS, WINDOW_FRAMES, sliding_rows
from streamclf.models.card import ENGINES_DIR, ModelCard, load_model_card, sha256_file

log = structlog.get_logger(__name__)

SPLIT_DIR = ENGINES_DIR / "split"
SPLIT_SCHEMA = 1
RING_FRAMES = 256  # >= the core frames of one window; a stream's ring is RING_FRAMES × 408 floats
# Both graphs get one input shape only: the frame graph FRAME_CALL patches a call (the last call
# of a batch padded), the window graph one window a call. ONNX Runtime then plans their memory
# once, in warm-up, and reuses it, whatever mix of streams and backlog later batches bring.
FRAME_CALL = 32
CONTEXT_FRAMES = 3  # the timbral blocks see 3 frames either side (streamclf.train.split)
MAX_STREAMS = 256  # rings kept; the least recently used stream beyond this is forgotten


@dataclass(frozen=True)
class SplitCard:
    """The two graphs cut from one shipped model (engines/split/<name>.json)."""

    name: str
    frame_path: Path
    window_path: Path
    context_frames: int
    core_frames: int
    timbral_dim: int


def load_split_card(card: ModelCard, *, split_dir: Path = SPLIT_DIR) -> SplitCard:
    """The split of `card`'s model; ModelError if absent or cut from other weights."""
    path = Path(split_dir) / f"{card.name}.json"
    try:
        document = json.loads(path.read_text())
        if document["schema"] != SPLIT_SCHEMA or document["model"] != card.name:
            msg = f"split card {path} is for {document['model']} schema {document['schema']}"
            raise ModelError(msg)
        if document["full_sha256"] != card.sha256:
            msg = f"split card {path} was cut from another {card.name}.onnx (sha256 differs)"
            raise ModelError(msg)
        paths = {}
        for part in ("frame", "window"):
            paths[part] = path.parent / document[part]["file"]
            if sha256_file(paths[part]) != document[part]["sha256"]:
                msg = f"{paths[part]} does not match its split card (sha256)"
                raise ModelError(msg)
        split = SplitCard(
            name=card.name, frame_path=paths["frame"], window_path=paths["window"],
            context_frames=int(document["context_frames"]),
            core_frames=int(document["core_frames"]), timbral_dim=int(document["timbral_dim"]),
        )
    except OSError as exc:
        msg = f"no usable split of {card.name} ({path}: {exc.strerror or exc})"
        raise ModelError(msg) from exc
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"split card {path} is malformed ({exc.__class__.__name__}: {exc})"
        raise ModelError(msg) from exc
    if split.core_frames + 2 * split.context_frames != card.window_frames:
        msg = f"split card {path} does not fit {card.window_frames}-frame windows"
        raise ModelError(msg)
    return split


# -- pure helpers -----------------------------------------------------------------------------


def frame_patches(*, rows: np.ndarray, context: int, out: np.ndarray) -> int:
    """Write the (2·context + 1)-frame patch around each middle row of `rows` into `out`.

    rows [n + 2·context, 96] → out[:n] = patches [n, 2·context + 1, 96]; returns n.
    """
    n = rows.shape[0] - 2 * context
    if n > 0:
        out[:n] = sliding_rows(rows, 2 * context + 1)
    return max(n, 0)


def overlap_agrees(*, prev: np.ndarray, prev_start: int, frames: np.ndarray, start: int) -> bool:
    """True when the frames two windows share (absolute indices) hold equal log-mel.

    prev [F, 96] starts at frame prev_start, frames [F, 96] at start >= prev_start.
    """
    shared = prev_start + prev.shape[0] - start
    return shared > 0 and np.array_equal(prev[start - prev_start :], frames[:shared])


class FeatureRing:
    """The timbral features of one stream's latest frames, addressed by absolute frame index.

    Holds frames [begin, end) of which the last `capacity` are kept; `prev` is the log-mel of
    the stream's latest window, against which the next one is checked before any reuse.
    """

    def __init__(self, *, capacity: int, dim: int) -> None:
        self.features = np.empty((capacity, dim), np.float32)
        self.begin = self.end = 0
        self.prev: np.ndarray | None = None
        self.prev_start = 0

    def restart(self, frame: int) -> None:
        self.begin = self.end = frame

    def holds(self, first: int) -> bool:
        """True when features from `first` up to `end` are all still in the ring."""
        return max(self.begin, self.end - self.features.shape[0]) <= first <= self.end

    def store(self, first: int, values: np.ndarray) -> None:
        """Write values [n, dim] for frames first … first + n − 1 (first == end)."""
        capacity = self.features.shape[0]
        for offset in range(0, values.shape[0], capacity):
            block = values[offset : offset + capacity]
            at = (first + offset) % capacity
            head = min(block.shape[0], capacity - at)
            self.features[at : at + head] = block[:head]
            self.features[: block.shape[0] - head] = block[head:]

    def gather(self, first: int, out: np.ndarray) -> None:
        """out [n, dim] ← features of frames first … first + n − 1 (all held)."""
        capacity = self.features.shape[0]
        at = first % capacity
        head = min(out.shape[0], capacity - at)
        out[:head] = self.features[at : at + head]
        out[head:] = self.features[: out.shape[0] - head]


# -- runners ----------------------------------------------------------------------------------


@dataclass
class IncrementalCounters:
    """Frames whose timbral features were computed vs taken from a ring; ring restarts."""

    windows: int = 0
    frames_computed: int = 0
    frames_reused: int = 0
    restarts: int = 0


class IncrementalRunner:
    """musicnn on ONNX Runtime (CPU) with per-stream rings of per-frame features.

    `run()` may be given several windows of the same stream (in stream order) and windows of
    many streams interleaved; memory is bounded by `max_batch` and `max_streams`.
    """

    def __init__(
        self,
        model: ModelCard | str | os.PathLike[str],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        threads: int | None = None,
        split_dir: Path = SPLIT_DIR,
        max_streams: int = MAX_STREAMS,
        precision: str = "fp32",
        reason: str = "",
    ) -> None:
        from streamclf.backends.onnx import default_threads, new_run_options, open_session

        card = model if isinstance(model, ModelCard) else load_model_card(model)
        self.split = load_split_card(card, split_dir=split_dir)
        threads = threads or default_threads()
        # With one shape per graph, the arena and a memory pattern are filled once and never
        # grow: flat RSS, ~100 MiB less than re-allocating per batch shape (docs/engines.md).
        self._frame = open_session(self.split.frame_path, threads=threads, mem_pattern=True)
        self._window = open_session(self.split.window_path, threads=threads, mem_pattern=True)
        self._run_options = new_run_options()
        self.info = EngineInfo(
            name="onnxruntime", device=f"cpu ({threads} threads)", precision=precision,
            max_batch=max_batch, model=card.name, embedding_dim=card.embedding_dim,
            reason=f"incremental{': ' + reason if reason else ''}", n_tags=len(card.labels),
        )
        self.counters = IncrementalCounters()
        self._max_streams = max_streams
        self._rings: OrderedDict[str, FeatureRing] = OrderedDict()
        ctx, core, dim = self.split.context_frames, self.split.core_frames, self.split.timbral_dim
        # zeros: the padding of a frame-graph call holds zeros or an earlier patch, never NaN
        patch_rows = -(-max_batch * core // FRAME_CALL) * FRAME_CALL
        self._patches = np.zeros((patch_rows, 2 * ctx + 1, N_MELS), np.float32)
        self._computed = np.empty((max_batch * core, dim), np.float32)
        self._logmel = new_batch_buffer(max_batch)
        self._core = np.empty((max_batch, core, dim), np.float32)

    @property
    def max_batch(self) -> int:
        return self.info.max_batch

    def reset(self, stream_id: str | None = None) -> None:
        """Forget a stream (restarted source, removed stream), or all of them when None;
        its next window starts afresh."""
        if stream_id is None:
            self._rings.clear()
        else:
            self._rings.pop(stream_id, None)

    def run(self, items: Sequence[tuple[str, Window]]) -> dict[str, np.ndarray]:
        chunks = [self._run_chunk(items[i : i + self.max_batch])
                  for i in range(0, len(items), self.max_batch)]
        if not chunks:
            return {"tags": np.empty((0, self.info.n_tags), np.float32),
                    "embedding": np.empty((0, self.info.embedding_dim), np.float32)}
        return {name: np.concatenate([c[name] for c in chunks]) for name in OUTPUT_NAMES}

    def warmup(self) -> None:
        """One full and one single batch of silence, on throw-away streams."""
        for n in (self.max_batch, 1):
            frames = np.zeros((WINDOW_FRAMES, N_MELS), np.float32)
            ids = [f"\0warmup{i}" for i in range(n)]
            self.run([(i, Window(0, 0, frames, 0.0, 0.0, -math.inf, math.nan)) for i in ids])
            for i in ids:
                self.reset(i)
        self.counters = IncrementalCounters()

    def interrupt(self) -> None:
        self._run_options.terminate = True

    def close(self) -> None:
        self._frame = self._window = None
        self._rings.clear()

    def _ring(self, stream_id: str) -> FeatureRing:
        ring = self._rings.pop(stream_id, None)
        if ring is None:
            if len(self._rings) >= self._max_streams:
                self._rings.popitem(last=False)
            ring = FeatureRing(capacity=RING_FRAMES, dim=self.split.timbral_dim)
        self._rings[stream_id] = ring
        return ring

    def _plan(self, stream_id: str, window: Window) -> tuple[FeatureRing, int, int]:
        """(ring, first new core frame, how many) for `window`; restarts the ring if unsafe."""
        ctx, core = self.split.context_frames, self.split.core_frames
        ring, start = self._ring(stream_id), window.start_frame
        first_core = start + ctx
        reusable = (ring.prev is not None and start >= ring.prev_start and ring.holds(first_core)
                    and overlap_agrees(prev=ring.prev, prev_start=ring.prev_start,
                                       frames=window.frames, start=start))
        if not reusable:
            if ring.prev is not None:
                self.counters.restarts += 1
                log.debug("incremental_restart", stream=stream_id, start_frame=start,
                          prev_start=ring.prev_start)
            ring.restart(first_core)
        ring.prev, ring.prev_start = window.frames, start
        first_new = max(first_core, ring.end)
        ring.end = first_core + core  # planned now, stored by `_run_chunk` before any gather
        return ring, first_new, ring.end - first_new

    def _run_chunk(self, items: Sequence[tuple[str, Window]]) -> dict[str, np.ndarray]:
        ctx, core = self.split.context_frames, self.split.core_frames
        plans, n_patches = [], 0
        try:
            for stream_id, window in items:
                ring, first_new, n_new = self._plan(stream_id, window)
                lo = first_new - ctx - window.start_frame
                rows = window.frames[lo : lo + n_new + 2 * ctx]
                frame_patches(rows=rows, context=ctx, out=self._patches[n_patches:])
                plans.append((ring, first_new, n_new, n_patches))
                n_patches += n_new
            for at in range(0, n_patches, FRAME_CALL):
                stop = min(at + FRAME_CALL, n_patches)
                call = self._patches[at : at + FRAME_CALL]
                (timbral,) = self._frame.run(["timbral"], {"context": call}, self._run_options)
                self._computed[at:stop] = timbral[: stop - at, 0]  # [n, 1, dim]: a frame a patch
            paired = zip(items, plans, strict=True)
            for i, ((_, window), (ring, first_new, n_new, at)) in enumerate(paired):
                ring.store(first_new, self._computed[at : at + n_new])
                ring.gather(window.start_frame + ctx, self._core[i])
                self._logmel[i] = window.frames
        except Exception:
            for stream_id, _ in items:  # a ring may be half-written: never reuse it
                self.reset(stream_id)
            raise
        n = len(items)
        tags = np.empty((n, self.info.n_tags), np.float32)
        embedding = np.empty((n, self.info.embedding_dim), np.float32)
        names = list(OUTPUT_NAMES)
        for i in range(n):
            tags[i : i + 1], embedding[i : i + 1] = self._window.run(
                names, {"logmel": self._logmel[i : i + 1], "core": self._core[i : i + 1]},
                self._run_options)
        self.counters.windows += n
        self.counters.frames_computed += n_patches
        self.counters.frames_reused += n * core - n_patches
        return {"tags": tags, "embedding": embedding}
