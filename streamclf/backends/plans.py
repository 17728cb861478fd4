"""On-disk cache of TensorRT plans, keyed by everything that makes a plan valid.

A serialized TensorRT engine only runs on the TensorRT version and GPU model it was built for,
with the precision and batch profile it was built with. Each plan is stored beside a JSON
sidecar holding its full key and the plan's sha256, so a plan is returned only when every part
of the key matches and its bytes are intact: a stale or damaged plan is never handed to
TensorRT. `plan_key` derives the key of a model file on a probed GPU. Pure python, no GPU
needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from streamclf.backends.base import GpuProbe
from streamclf.errors import EngineError

log = structlog.get_logger(__name__)

PLAN_SUFFIX = ".plan"
SIDECAR_SUFFIX = ".json"
PRECISIONS = ("fp16", "fp32")


@dataclass(frozen=True)
class PlanKey:
    """What a plan was built from and for; two plans are interchangeable only if keys are equal."""

    model: str
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    min_batch: int
    opt_batch: int
    max_batch: int

    def digest(self) -> str:
        """A short stable hash of every field, used in the file name."""
        canonical = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(canonical).hexdigest()[:16]

    def file_stem(self) -> str:
        return f"{self.model}-{self.precision}-b{self.max_batch}-{self.digest()}"


@dataclass(frozen=True)
class PlanRecord:
    """One cached plan as found on disk; `problem` is empty for a usable plan."""

    path: Path
    key: PlanKey | None
    size_bytes: int
    built_at: float
    build_s: float
    problem: str


def default_plan_dir(env: dict[str, str] | None = None) -> Path:
    """$STATE_DIRECTORY/plans under systemd (its first entry), else ~/.cache/streamclf/plans."""
    env = os.environ if env is None else env
    state = env.get("STATE_DIRECTORY", "")
    if state:
        return Path(state.split(":")[0]) / "plans"
    cache_home = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "streamclf" / "plans"


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def plan_key(
    path: Path, probe: GpuProbe, *, precision: str, max_batch: int, opt_batch: int = 1
) -> PlanKey:
    if precision not in PRECISIONS:
        msg = f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})"
        raise EngineError(msg)
    return PlanKey(
        model=path.stem,
        onnx_sha256=file_sha256(path),
        tensorrt_version=probe.tensorrt_version,
        gpu_name=probe.gpu_name,
        compute_capability=probe.compute_capability,
        precision=precision,
        min_batch=1,
        opt_batch=min(opt_batch, max_batch),
        max_batch=max_batch,
    )


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class PlanCache:
    """A directory of `<model>-<precision>-b<max>-<digest>.plan` files with JSON sidecars."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def plan_path(self, key: PlanKey) -> Path:
        return self.directory / (key.file_stem() + PLAN_SUFFIX)

    def store(self, key: PlanKey, plan: bytes, *, build_s: float = 0.0) -> Path:
        """Write the plan, then its sidecar: the sidecar is the commit marker of a complete plan."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.plan_path(key)
        _atomic_write(path, bytes(plan))
        sidecar = {
            "key": dataclasses.asdict(key),
            "plan_sha256": hashlib.sha256(plan).hexdigest(),
            "size_bytes": len(plan),
            "built_at": time.time(),
            "build_s": round(build_s, 3),
        }
        _atomic_write(path.with_suffix(SIDECAR_SUFFIX), json.dumps(sidecar, indent=2).encode())
        log.info("plan_stored", path=str(path), size_bytes=len(plan))
        return path

    def load(self, key: PlanKey) -> bytes | None:
        """The plan's bytes if a complete, intact plan for exactly this key exists, else None.

        A plan that is present but damaged (bad sidecar, key mismatch, wrong checksum) is
        removed and logged, so the caller rebuilds it.
        """
        path = self.plan_path(key)
        if not path.exists() and not path.with_suffix(SIDECAR_SUFFIX).exists():
            return None
        record = read_record(path)
        problem = record.problem or ("" if record.key == key else "key mismatch")
        if problem:
            log.warning("plan_discarded", path=str(path), problem=problem)
            self.remove(path)
            return None
        return path.read_bytes()

    def remove(self, path: Path) -> None:
        for p in (path, path.with_suffix(SIDECAR_SUFFIX)):
            p.unlink(missing_ok=True)


def read_record(path: Path) -> PlanRecord:
    """Check one plan file against its sidecar; never raises for a damaged cache entry."""
    sidecar_path = path.with_suffix(SIDECAR_SUFFIX)
    size = path.stat().st_size if path.exists() else 0
    try:
        sidecar = json.loads(sidecar_path.read_text())
        key = PlanKey(**sidecar["key"])
        built_at, build_s = float(sidecar["built_at"]), float(sidecar["build_s"])
        expected_sha = sidecar["plan_sha256"]
    except FileNotFoundError:
        return PlanRecord(path, None, size, 0.0, 0.0, "no sidecar (incomplete build)")
    except (ValueError, KeyError, TypeError) as exc:
        return PlanRecord(path, None, size, 0.0, 0.0, f"unreadable sidecar ({exc})")
    if not path.exists():
        return PlanRecord(path, key, 0, built_at, build_s, "plan file missing")
    if file_sha256(path) != expected_sha:
        return PlanRecord(path, key, size, built_at, build_s, "checksum mismatch (corrupt plan)")
    if key.file_stem() != path.stem:
        return PlanRecord(path, key, size, built_at, build_s, "file name does not match its key")
    return PlanRecord(path, key, size, built_at, build_s, "")


def list_plans(cache_dir: str | os.PathLike[str]) -> list[PlanRecord]:
    """Every plan in the cache directory with what it was built for, damaged ones included."""
    directory = Path(cache_dir)
    if not directory.is_dir():
        return []
    stems = {p.stem for p in directory.iterdir() if p.suffix in (PLAN_SUFFIX, SIDECAR_SUFFIX)}
    stems = {s for s in stems if not s.startswith(".")}
    return [read_record(directory / (stem + PLAN_SUFFIX)) for stem in sorted(stems)]
