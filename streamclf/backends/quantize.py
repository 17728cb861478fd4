"""int8 musicnn on ONNX Runtime's CPU: on which CPUs it is the default, and how it is made.

The daemon's work is the incremental runner's frame graph (the timbral convolutions, 2.27 of
the 2.8 GFLOP of a window) and its window graph. Only the frame graph's convolutions are worth
quantising; the input batch normalisation, the max-pooling over frequency and the whole window
graph stay fp32 (docs/engines.md, "int8", has the per-operator profile that says why).

Which int8 graph is accurate depends on the CPU: without VNNI, MLAS multiplies uint8 × int8
with `vpmaddubsw`, whose int16 pair sums saturate, so full-range int8 weights lose accuracy there
and the shipped graph uses 7-bit weights (`reduce_range`). `auto` reads the CPU's int8
dot-product flags (`choose_cpu_precision`) and logs why it chose; fp32 is the default.

Runtime part: the flags and the decision (no onnx). `quantize_frame_graph` and the command
`python -m streamclf.backends.quantize` make the shipped graphs (the dev or train extra: onnx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# CPU flags (as /proc/cpuinfo spells them) of int8 dot-product instructions MLAS uses.
INT8_DOT_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
CPU_PRECISIONS = ("auto", "fp32", "int8")
INT8_SPLIT_DIR_NAME = "split-int8"  # beside engines/split


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in the text of /proc/cpuinfo (x86: `flags : …`)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU flags; empty where the file is missing (not Linux, not x86)."""
    try:
        return cpu_flags(Path(path).read_text())
    except OSError:
        return frozenset()


def int8_dot_product(flags: Iterable[str]) -> str | None:
    """The int8 dot-product instruction set the CPU has (VNNI or AMX), or None."""
    present = set(flags)
    return next((flag for flag in INT8_DOT_FLAGS if flag in present), None)


def choose_cpu_precision(setting: str, flags: Iterable[str]) -> tuple[str, str]:
    """(precision, reason) of the ONNX Runtime runner: "auto" takes int8 on none of the CPUs
    measured so far, because the shipped int8 graph was slower than fp32 on each at the
    daemon's 1 s hop: 0.70× with AMX (an Intel Xeon with `amx_int8`), 0.67× with AVX-512 VNNI
    (an AMD EPYC), no faster with AVX2 alone (docs/engines.md, "int8"). `int8` asks for it
    anyway."""
    if setting not in CPU_PRECISIONS:
        msg = f"cpu precision must be one of {', '.join(CPU_PRECISIONS)}, not {setting!r}"
        raise ValueError(msg)
    if setting != "auto":
        return setting, f"cpu_precision = {setting}"
    found = int8_dot_product(flags)
    if found:
        return "fp32", f"auto: the CPU has {found}, but int8 measured slower than fp32 with it"
    return "fp32", f"auto: no int8 dot product on this CPU (none of {', '.join(INT8_DOT_FLAGS)})"


def choose_split(model: str, setting: str, *, fp32_dir: Path,
                 flags: Iterable[str] | None = None) -> tuple[Path, str, str]:
    """(split folder, precision, reason) for `model`'s incremental runner: the int8 split
    beside `fp32_dir` where `setting` (and for "auto" the CPU) asks for it and one is
    shipped for this model, else `fp32_dir`."""
    precision, reason = choose_cpu_precision(
        setting, read_cpu_flags() if flags is None else flags)
    int8_dir = Path(fp32_dir).parent / INT8_SPLIT_DIR_NAME
    if precision == "int8" and not (int8_dir / f"{model}.json").exists():
        return fp32_dir, "fp32", f"{reason}, but no int8 split of {model} in {int8_dir}"
    return (int8_dir if precision == "int8" else fp32_dir), precision, reason


# -- making the int8 frame graph (build time: needs onnx) -------------------------------------
WEIGHT_QMAX = 127  # full 8-bit weights: 7-bit ones (reduce_range) doubled the error
WEIGHT_ZERO = 128


@dataclass(frozen=True)
class InputRange:
    """The log-mel range the input quantisation covers, from the calibration windows."""

    low: float
    high: float


def calibrated_range(windows: np.ndarray) -> InputRange:
    """The range of log-mel values in real windows [N, 187, 96]; 0 is always inside."""
    return InputRange(low=min(float(windows.min()), 0.0), high=max(float(windows.max()), 0.0))


def uint8_quantisation(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) mapping [low, high] (containing 0) onto 0 … 255."""
    scale = (high - low) / 255.0
    return scale, round(-low / scale)


def per_channel_weights(weight: np.ndarray, *, qmax: int = WEIGHT_QMAX
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit weights [C, …] stored as uint8 around the zero point WEIGHT_ZERO, and
    their per-output-channel scales [C].

    uint8, not int8: ONNX Runtime's ConvInteger ran 5× slower with int8 weights (docs/engines.md),
    and it takes one zero point per tensor, which a symmetric scheme keeps at 128 per channel.
    """
    peak = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    shaped = scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    return (np.round(weight / shaped) + WEIGHT_ZERO).astype(np.uint8), scale


def quantize_frame_graph(src: Path, dst: Path, *, input_range: InputRange) -> list[str]:
    """Write `src` (a split frame graph) with each Conv as a static-input ConvInteger.

    Each Conv's input, the batch-normalised log-mel (a scalar affine map of it: musicnn's input
    BN has one channel), is quantised with a fixed scale from `input_range`, so a patch's
    features never depend on the other patches of its call (ONNX Runtime's dynamic quantiser
    takes the range per call); weights are 8-bit per output channel, applied in the float Mul
    after ConvInteger's int32 output (its own quantiser does only per-tensor for ConvInteger).
    Everything else stays fp32. Returns the names of the quantised Conv nodes.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantised_inputs: dict[str, tuple[str, str, float]] = {}  # fp32 -> (uint8, zero, scale)
    nodes, done, extra = [], [], []
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type != "Conv":
            nodes.append(node)
            continue
        x, w = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 else None
        if x not in quantised_inputs:
            low, high = batchnorm_range(producers.get(x), arrays, input_range)
            scale, zero = uint8_quantisation(low, high)
            names = (f"{x}_u8", f"{x}_u8_scale", f"{x}_u8_zero")
            extra += [numpy_helper.from_array(np.array(scale, np.float32), names[1]),
                      numpy_helper.from_array(np.array(zero, np.uint8), names[2])]
            nodes.append(helper.make_node("QuantizeLinear", [x, names[1], names[2]], [names[0]],
                                          name=f"{x}_quantize"))
            quantised_inputs[x] = (names[0], names[2], scale)
        xq, x_zero, x_scale = quantised_inputs[x]
        wq, w_scale = per_channel_weights(arrays[w])
        prefix = node.name or node.output[0]
        extra += [numpy_helper.from_array(wq, f"{w}_u8"),
                  numpy_helper.from_array(np.array(WEIGHT_ZERO, np.uint8), f"{w}_u8_zero"),
                  numpy_helper.from_array((w_scale * np.float32(x_scale)).reshape(1, -1, 1, 1),
                                          f"{w}_rescale")]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes += [
            helper.make_node("ConvInteger", [xq, f"{w}_u8", x_zero, f"{w}_u8_zero"],
                             [f"{prefix}_i32"], name=f"{prefix}_int8", **attrs),
            helper.make_node("Cast", [f"{prefix}_i32"], [f"{prefix}_f32"],
                             to=onnx.TensorProto.FLOAT, name=f"{prefix}_cast"),
        ]
        scaled = node.output[0] if bias is None else f"{prefix}_scaled"
        nodes.append(helper.make_node("Mul", [f"{prefix}_f32", f"{w}_rescale"], [scaled],
                                      name=f"{prefix}_rescale"))
        if bias is not None:
            extra.append(numpy_helper.from_array(arrays[bias].reshape(1, -1, 1, 1),
                                                 f"{bias}_4d"))
            nodes.append(helper.make_node("Add", [scaled, f"{bias}_4d"], [node.output[0]],
                                          name=f"{prefix}_bias"))
        done.append(node.name)
    save_rewritten(model, nodes, extra, dst,
                   replaced={n.input[1] for n in graph.node if n.op_type == "Conv"})
    return done


def save_rewritten(model, nodes: list, extra: list, dst: Path, *, replaced: set[str]) -> None:
    """Give `model` these nodes, drop the `replaced` initializers and add the `extra` ones,
    check it and write it to `dst`."""
    import onnx

    graph = model.graph
    kept = [i for i in graph.initializer if i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept + extra)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def batchnorm_range(node, arrays: dict, input_range: InputRange) -> tuple[float, float]:
    """The range of a one-channel BatchNormalization's output over `input_range` (with 0)."""
    if node is None or node.op_type != "BatchNormalization":
        return input_range.low, input_range.high
    if any(arrays[name].size != 1 for name in node.input[1:5]):
        msg = f"{node.name}: the input quantisation expects a one-channel BatchNormalization"
        raise ValueError(msg)
    gamma, beta, mean, var = (float(arrays[name].reshape(-1)[0]) for name in node.input[1:5])
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    slope = gamma / np.sqrt(var + epsilon)
    ends = sorted(slope * (v - mean) + beta for v in (input_range.low, input_range.high))
    return min(ends[0], 0.0), max(ends[1], 0.0)


def write_int8_split(card, *, windows: np.ndarray, calibration: str, out_dir: Path,
                     split_dir: Path, builder: str) -> Path:
    """Write `card`'s int8 split into `out_dir`: the quantised frame graph and a split card
    whose window graph is the fp32 one in `split_dir` (referenced, not copied). Returns the card.
    """
    import onnxruntime

    from streamclf.models.card import sha256_file

    fp32 = json.loads((split_dir / f"{card.name}.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = out_dir / f"{card.name}.frame.onnx"
    input_range = calibrated_range(windows)
    quantised = quantize_frame_graph(split_dir / fp32["frame"]["file"], frame,
                                     input_range=input_range)
    window = split_dir / fp32["window"]["file"]
    document = {
        **fp32,
        "frame": {"file": frame.name, "sha256": sha256_file(frame)},
        "window": {"file": os.path.relpath(window, out_dir), "sha256": sha256_file(window)},
        "quantization": {
            "scheme": "frame graph: Conv -> ConvInteger, uint8 input with a fixed scale, "
                      "symmetric 8-bit weights per output channel (uint8 around 128); "
                      "everything else fp32",
            "nodes": quantised,
            "input_range": asdict(input_range),
            "calibration": calibration,
            "onnxruntime": onnxruntime.__version__,
            "builder": builder,
        },
    }
    document.pop("split_vs_full_max_abs", None)
    path = out_dir / f"{card.name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def dataset_windows(dataset: Path, *, split: str | None, hop_frames: int
                    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, int]]]:
    """Every window the daemon would make of each clip of `dataset` (of `split`, or all):
    frames [N, 187, 96], their start frames [N] and, per clip, (clip id, its split, its
    window count), in order."""
    import csv

    from streamclf.features.framer import logmel_windows_for_file

    # the manifest's path and split columns only (streamclf.evaluate reads the rest, for the
    # application; a backend module does not reach up to it)
    with open(dataset / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    frames, starts, clips = [], [], []
    for row in rows:
        if split is None or row["split"] == split:
            path = dataset / row["path"]
            windows = logmel_windows_for_file(path, hop_frames=hop_frames)
            frames += [w.frames for w in windows]
            starts += [w.start_frame for w in windows]
            clips.append((path.stem, row["split"], len(windows)))
    return np.stack(frames), np.array(starts), clips


def main(argv: list[str] | None = None) -> int:
    from streamclf.backends.incremental import SPLIT_DIR
    from streamclf.features.mel import frames_for_seconds
    from streamclf.models.card import load_model_card

    parser = argparse.ArgumentParser(
        prog="python -m streamclf.backends.quantize",
        description="Make the int8 split of a musicnn model (engines/split-int8/): its frame "
                    "graph's convolutions in int8, calibrated on real windows.")
    parser.add_argument("--model", default="fused_musicnn", help="a shipped musicnn model")
    parser.add_argument("--dataset", type=Path, default=Path("datasets/genres"),
                        help="calibration clips (a folder with manifest.csv)")
    parser.add_argument("--split", default="calib", help="the dataset's calibration split")
    parser.add_argument("--out", type=Path, default=SPLIT_DIR.parent / INT8_SPLIT_DIR_NAME,
                        help="output folder (default engines/split-int8)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    card = load_model_card(args.model)
    windows, _, clips = dataset_windows(args.dataset, split=args.split,
                                     hop_frames=frames_for_seconds(1.0))
    calibration = (f"{args.dataset.name} split {args.split!r}: {len(clips)} clips, "
                   f"{len(windows)} windows at a 1 s hop")
    path = write_int8_split(card, windows=windows, calibration=calibration, out_dir=args.out,
                            split_dir=SPLIT_DIR, builder=" ".join([parser.prog, *(argv or [])]))
    print(f"{path}: {calibration}")
    return 0


if __name__ == "__main__":
    from streamclf.errors import StreamclfError

    try:
        raise SystemExit(main())
    except (StreamclfError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
