"""int8: VNNI detection from CPU flags, the precision choice, and the shipped int8 split on real
music (a few windows; tools/int8_eval.py scores every window of datasets/genres)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamclf.backends.incremental import SPLIT_DIR, IncrementalRunner
from streamclf.backends.quantize import (
    choose_cpu_precision,
    choose_split,
    cpu_flags,
    int8_dot_product,
)
from streamclf.backends.runner import load_runner
from streamclf.evaluate import load_manifest
from streamclf.features.framer import logmel_windows_for_file
from streamclf.features.mel import frames_for_seconds
from streamclf.models.card import load_model_card

ROOT = Path(__file__).resolve().parent.parent
INT8_DIR = ROOT / "engines" / "split-int8"
MAX_ABS_DP = 0.03

EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
"""
ICELAKE = "processor : 0\nflags : sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
ALDER_LAKE = "flags\t: avx2 avx_vnni\n"
SAPPHIRE_RAPIDS = "flags\t: avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 asimddp\n"


class TestInt8DotProduct:
    """The CPU's int8 dot-product instructions are read from /proc/cpuinfo's flags line."""

    @pytest.mark.parametrize(("text", "expected"), [
        (EPYC_AVX2, None), (ICELAKE, "avx512_vnni"), (ALDER_LAKE, "avx_vnni"),
        (SAPPHIRE_RAPIDS, "amx_int8"), (ARM, None), ("", None),
    ])
    def test_from_cpuinfo_text(self, text, expected):
        assert int8_dot_product(cpu_flags(text)) == expected

    def test_a_flag_is_a_whole_word(self):
        assert int8_dot_product(cpu_flags("flags : avx512_vnnix avx_vnni_int8\n")) is None

    @pytest.mark.parametrize(("cpu", "found"), [(SAPPHIRE_RAPIDS, "amx_int8"),
                                                (ICELAKE, "avx512_vnni")])
    def test_auto_stays_fp32_where_int8_measured_slower(self, cpu, found):
        """The shipped int8 graph ran slower than fp32 with AMX and with VNNI (docs/engines.md)."""
        precision, reason = choose_cpu_precision("auto", cpu_flags(cpu))
        assert precision == "fp32" and found in reason and "measured slower" in reason
        precision, reason = choose_cpu_precision("auto", cpu_flags(EPYC_AVX2))
        assert precision == "fp32" and "no int8 dot product" in reason

    def test_an_explicit_setting_overrides_the_cpu(self):
        assert choose_cpu_precision("int8", cpu_flags(EPYC_AVX2))[0] == "int8"
        assert choose_cpu_precision("fp32", cpu_flags(ICELAKE))[0] == "fp32"

    def test_an_unknown_setting_is_refused(self):
        with pytest.raises(ValueError, match="one of auto, fp32, int8"):
            choose_cpu_precision("fp16", set())


class TestChooseSplit:
    """int8 uses the split beside the fp32 one, where one is shipped for the model."""

    def test_int8_split_where_shipped(self):
        folder, precision, _ = choose_split("fused_musicnn", "int8", fp32_dir=SPLIT_DIR)
        assert (folder.name, precision) == ("split-int8", "int8")

    def test_fp32_with_the_reason_where_none_is_shipped(self, tmp_path):
        folder, precision, reason = choose_split("MSD_musicnn", "int8", fp32_dir=tmp_path / "s")
        assert (folder, precision) == (tmp_path / "s", "fp32")
        assert "no int8 split of MSD_musicnn" in reason

    @pytest.mark.parametrize("cpu", [EPYC_AVX2, ALDER_LAKE, SAPPHIRE_RAPIDS])
    def test_auto_takes_the_fp32_split(self, cpu):
        folder, precision, _ = choose_split("fused_musicnn", "auto", fp32_dir=SPLIT_DIR,
                                            flags=cpu_flags(cpu))
        assert (folder, precision) == (SPLIT_DIR, "fp32")


@pytest.fixture(scope="module")
def card():
    return load_model_card("fused_musicnn")


@pytest.fixture(scope="module")
def streams():
    """Six windows at a 1 s hop from one clip of each of three families of datasets/genres."""
    clips = {}
    for clip in load_manifest(ROOT / "datasets" / "genres"):
        clips.setdefault(clip.label, clip)
    chosen = [clips[label] for label in ("metal", "classical", "electronic")]
    return [(c.path.stem, logmel_windows_for_file(c.path, hop_frames=frames_for_seconds(1.0))[:6])
            for c in chosen]


def run(runner, streams) -> np.ndarray:
    return np.array([runner.run([(sid, w)])["tags"][0] for sid, ws in streams for w in ws])


def test_the_shipped_int8_split_stays_near_fp32(card, streams):
    """On these windows every family probability is within 0.03 of fp32, so the top family
    agrees wherever fp32's lead is wider than 2 × 0.03 (a broken graph fails this; over every
    window of the set the largest move is 0.034: docs/engines.md, "int8")."""
    fp32 = run(IncrementalRunner(card, threads=1), streams)
    int8 = run(IncrementalRunner(card, threads=1, split_dir=INT8_DIR), streams)
    assert np.abs(int8 - fp32).max() <= MAX_ABS_DP
    top2 = np.sort(fp32, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * MAX_ABS_DP
    assert clear.any()
    assert (int8.argmax(1) == fp32.argmax(1))[clear].all()


def test_the_shipped_frame_graph_is_integer_and_small():
    import onnx

    frame = INT8_DIR / "fused_musicnn.frame.onnx"
    ops = {node.op_type for node in onnx.load(str(frame)).graph.node}
    assert "ConvInteger" in ops and "Conv" not in ops
    assert frame.stat().st_size < (SPLIT_DIR / "fused_musicnn.frame.onnx").stat().st_size / 3


@pytest.mark.parametrize(("setting", "expected"), [("int8", "int8"), ("fp32", "fp32")])
def test_the_option_selects_the_graph(card, setting, expected):
    runner = load_runner(card, "onnxruntime", cpu_precision=setting, threads=1)
    assert runner.info.precision == expected
    assert runner.split.frame_path.parent.name == ("split-int8" if expected == "int8" else "split")
    runner.close()
