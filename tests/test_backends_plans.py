"""The TensorRT plan cache: keys, lookup, invalidation and damaged files, on real files (no GPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from streamclf.backends.plans import PlanCache, PlanKey, default_plan_dir, list_plans

KEY = PlanKey(
    model="MSD_musicnn",
    onnx_sha256="ab" * 32,
    tensorrt_version="10.3.0",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
    precision="fp16",
    min_batch=1,
    opt_batch=1,
    max_batch=32,
)
PLAN = bytes(range(256)) * 64


class TestPlanKey:
    """Every field of the key decides which plan is used; the digest is stable across runs."""

    def test_digest_is_stable(self) -> None:
        assert KEY.digest() == dataclasses.replace(KEY).digest()
        assert len(KEY.digest()) == 16

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("onnx_sha256", "cd" * 32),
            ("tensorrt_version", "10.4.0"),
            ("gpu_name", "NVIDIA L4"),
            ("compute_capability", "8.9"),
            ("precision", "fp32"),
            ("opt_batch", 8),
            ("max_batch", 16),
        ],
    )
    def test_each_field_changes_the_digest(self, field: str, value: object) -> None:
        assert dataclasses.replace(KEY, **{field: value}).digest() != KEY.digest()


class TestPlanCache:
    """A plan is returned only for its exact key and intact bytes; damaged ones are removed."""

    def test_round_trip(self, tmp_path: Path) -> None:
        cache = PlanCache(tmp_path / "plans")
        path = cache.store(KEY, PLAN, build_s=12.5)
        assert path.parent == tmp_path / "plans"
        assert cache.load(KEY) == PLAN

    def test_absent_plan_is_none(self, tmp_path: Path) -> None:
        assert PlanCache(tmp_path).load(KEY) is None

    @pytest.mark.parametrize(
        "other",
        [
            {"tensorrt_version": "10.4.0"},
            {"gpu_name": "NVIDIA A10", "compute_capability": "8.6"},
            {"precision": "fp32"},
            {"onnx_sha256": "00" * 32},
        ],
    )
    def test_plan_for_another_gpu_version_or_model_is_never_returned(
        self, tmp_path: Path, other: dict
    ) -> None:
        cache = PlanCache(tmp_path)
        cache.store(KEY, PLAN)
        assert cache.load(dataclasses.replace(KEY, **other)) is None
        assert cache.load(KEY) == PLAN  # the other machine's plan is left alone

    def test_corrupt_plan_is_discarded(self, tmp_path: Path) -> None:
        cache = PlanCache(tmp_path)
        path = cache.store(KEY, PLAN)
        path.write_bytes(PLAN[:-100])  # truncated, as by a full disk
        assert cache.load(KEY) is None
        assert not path.exists() and not path.with_suffix(".json").exists()

    def test_plan_without_sidecar_is_an_incomplete_build(self, tmp_path: Path) -> None:
        cache = PlanCache(tmp_path)
        path = cache.store(KEY, PLAN)
        path.with_suffix(".json").unlink()
        assert cache.load(KEY) is None
        assert not path.exists()

    def test_unreadable_sidecar_is_discarded(self, tmp_path: Path) -> None:
        cache = PlanCache(tmp_path)
        path = cache.store(KEY, PLAN)
        path.with_suffix(".json").write_text("{not json")
        assert cache.load(KEY) is None

    def test_sidecar_with_another_key_is_discarded(self, tmp_path: Path) -> None:
        """A plan file renamed (or copied) to another key's name is not trusted."""
        cache = PlanCache(tmp_path)
        path = cache.store(KEY, PLAN)
        sidecar = json.loads(path.with_suffix(".json").read_text())
        sidecar["key"]["gpu_name"] = "NVIDIA T4"
        path.with_suffix(".json").write_text(json.dumps(sidecar))
        assert cache.load(KEY) is None


class TestListPlans:
    """`engine info` sees every plan with what it was built for, and damaged ones flagged."""

    def test_lists_good_and_damaged(self, tmp_path: Path) -> None:
        cache = PlanCache(tmp_path)
        good = cache.store(KEY, PLAN, build_s=3.0)
        bad = cache.store(dataclasses.replace(KEY, precision="fp32"), PLAN)
        bad.write_bytes(b"garbage")
        (tmp_path / "notes.txt").write_text("not a plan")
        records = {r.path: r for r in list_plans(tmp_path)}
        assert set(records) == {good, bad}
        assert records[good].problem == "" and records[good].key == KEY
        assert records[good].build_s == 3.0 and records[good].size_bytes == len(PLAN)
        assert "checksum" in records[bad].problem

    def test_missing_directory_lists_nothing(self, tmp_path: Path) -> None:
        assert list_plans(tmp_path / "absent") == []


class TestDefaultPlanDir:
    """systemd's StateDirectory wins; otherwise the user's cache directory."""

    def test_state_directory(self) -> None:
        env = {"STATE_DIRECTORY": "/var/lib/streamclf:/var/lib/other", "HOME": "/home/x"}
        assert default_plan_dir(env) == Path("/var/lib/streamclf/plans")

    def test_xdg_cache_home(self) -> None:
        assert default_plan_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/streamclf/plans")

    def test_home_cache(self) -> None:
        assert default_plan_dir({}) == Path.home() / ".cache" / "streamclf" / "plans"


def test_engine_info_command_lists_plans(tmp_path: Path) -> None:
    """`streamclf engine info` prints each plan with what it was built for, damage flagged."""
    import subprocess
    import sys

    cache = PlanCache(tmp_path)
    cache.store(KEY, PLAN, build_s=41.0)
    cache.store(dataclasses.replace(KEY, max_batch=8), PLAN).write_bytes(b"x")
    result = subprocess.run(
        [sys.executable, "-m", "streamclf.cli", "engine", "info", "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"2 plan(s) in {tmp_path}" in result.stdout
    assert (
        "MSD_musicnn fp16 batch 1..32 (opt 1), TensorRT 10.3.0, NVIDIA H100 80GB HBM3 sm_90"
        in result.stdout
    )
    assert "[checksum mismatch (corrupt plan)]" in result.stdout
