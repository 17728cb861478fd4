"""FLOP counting and the engine benchmark's shape (speed targets live in the benchmark, not
here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from backends_helpers import card
from onnx import TensorProto, helper

from streamclf.bench.engines import render_markdown, run_engine_bench, sgemm_gflops
from streamclf.bench.flops import count_flops, node_flops


def _conv_gemm_model(path: Path) -> Path:
    """x [1, 3, 10, 12] → Conv(8 filters, 3×5, group 1) → [1, 8, 8, 8] → Flatten → Gemm(512→4)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 10, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 5], np.ones(8 * 3 * 3 * 5, np.float32))
    g = helper.make_tensor("g", TensorProto.FLOAT, [4, 512], np.ones(4 * 512, np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[w, g])
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
        str(path),
    )
    return path


class TestFlops:
    """2 FLOPs per multiply-add of each Conv/Gemm, counted at batch 1."""

    def test_hand_counted_graph(self, tmp_path: Path) -> None:
        count = count_flops(_conv_gemm_model(tmp_path / "tiny.onnx"))
        conv = 2 * (8 * 8 * 8) * (3 * 3 * 5)
        gemm = 2 * 4 * 512
        assert count.by_op == {"Conv": conv, "MatMul": 0, "Gemm": gemm}
        assert count.total == conv + gemm

    def test_matmul_and_transposed_gemm(self) -> None:
        assert node_flops("MatMul", [(2, 3, 5), (5, 7)], (2, 3, 7)) == 2 * 2 * 3 * 7 * 5
        assert node_flops("Gemm", [(5, 2), (5, 7)], (2, 7), trans_a=True) == 2 * 2 * 7 * 5

    def test_real_musicnn(self) -> None:
        """The front end dominates: two timbral convs (7×38, 7×67), three temporal, three
        mid-end."""
        timbral = 2 * 204 * 187 * (59 * 7 * 38 + 30 * 7 * 67)
        temporal = 2 * 51 * 187 * 96 * (128 + 64 + 32)
        midend = 2 * 64 * 187 * 7 * (561 + 64 + 64)
        dense = 2 * (1506 * 200 + 200 * 50)
        assert (
            count_flops(card("MSD_musicnn").onnx_path).total == timbral + temporal + midend + dense
        )


class TestEngineBench:
    """The benchmark returns every field the report needs and renders one row per engine."""

    def test_sgemm_rate_is_plausible(self) -> None:
        assert 1 < sgemm_gflops(sizes=(256,), min_time_s=0.05) < 1e5

    @pytest.mark.timeout(120)
    def test_quick_run_on_onnxruntime(self) -> None:
        results = run_engine_bench(card("MTT_vgg"), kinds=["onnxruntime"], quick=True)
        [row] = results["engines"]
        assert row["engine"] == "onnxruntime" and row["max_abs_vs_first"] == 0.0
        assert set(row["windows_per_s"]) == {1, 8, 32}
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"]
        assert results["flops_per_window"] > 1e9
        assert "onnxruntime_sgemm_share_batch8" in results["checks"]
        # the rate labelled "at best" is the best of the run, the calls alongside included
        machine = results["machine"]
        assert machine["sgemm_gflops"] >= machine["sgemm_gflops_alongside"] > 0
        table = render_markdown(results)
        assert "| onnxruntime | cpu" in table and "GFLOP per window" in table
