"""int8 against fp32 for the incremental runner (the daemon's work at a 1 s hop), in one run.

For each variant of the frame graph (the shipped scheme of `streamclf.backends.quantize`,
`qlinear_pooled` (QLinearConv with per-channel pooled output ranges, below), and ONNX Runtime's
own static QDQ / QOperator and dynamic quantisers for comparison):

- accuracy on every window of the dataset at a 1 s hop, each clip one stream, against fp32:
  same top output (for the fused model: the published genre family), max and mean |Δp|;
- kernels and time per operator from ONNX Runtime's profiler (frame and window graph);
- throughput, all variants in interleaved rounds (so machine load hits them alike): S streams,
  one window of each per call, as the engine worker batches them at each hop.

It prints the CPU flags it saw and writes int8.json and int8.md into --out:

    python tools/int8_eval.py --out /tmp/int8-eval

Windows and fp32 outputs are cached in --cache (default: ~/.cache/streamclf/int8-eval).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from streamclf.backends.incremental import SPLIT_DIR, IncrementalRunner
from streamclf.backends.onnx import default_threads, session_options
from streamclf.backends.quantize import (
    INT8_DOT_FLAGS,
    batchnorm_range,
    calibrated_range,
    dataset_windows,
    int8_dot_product,
    read_cpu_flags,
    save_rewritten,
    uint8_quantisation,
    write_int8_split,
)
from streamclf.features.framer import Window
from streamclf.features.mel import frames_for_seconds
from streamclf.logs import configure_logging
from streamclf.models.card import load_model_card

HOP_FRAMES = frames_for_seconds(1.0)
SHOWN_FLAGS = ("avx2", "avx512f", "avx512bw", *INT8_DOT_FLAGS)
CALIB_WINDOWS_ORT = 60  # ONNX Runtime's calibrators run the graph: the first try used 60
MAX_ABS_DP = 0.03
MIN_SAME = 0.98
MIN_SPEED_UP = 1.5


def cpu_report() -> dict:
    flags = read_cpu_flags()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                  .splitlines() if line.startswith("model name")), platform.processor())
    return {"model": model, "cores": default_threads(), "flags": [f for f in SHOWN_FLAGS
                                                                  if f in flags],
            "int8_dot_product": int8_dot_product(flags), "loadavg": os.getloadavg()}


def cached_windows(dataset: Path, cache: Path) -> tuple[np.ndarray, list]:
    key = hashlib.sha256((dataset / "manifest.csv").read_bytes()).hexdigest()[:16]
    path = cache / f"windows-{key}-hop{HOP_FRAMES}.npz"
    if not path.exists():
        frames, starts, clips = dataset_windows(dataset, split=None, hop_frames=HOP_FRAMES)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, frames=frames, starts=starts, clips=np.array(clips, dtype=object))
    data = np.load(path, allow_pickle=True)
    return data["frames"], data["starts"], [tuple(c) for c in data["clips"]]


def clip_streams(frames: np.ndarray, starts: np.ndarray, clips: list
                 ) -> list[tuple[str, list[Window]]]:
    """Each clip as (stream id, its windows in order)."""
    out, at = [], 0
    for clip_id, _, n in clips:
        out.append((clip_id, [Window(i - at, int(starts[i]), frames[i], 0.0, 0.0, 0.0, 0.0)
                              for i in range(at, at + int(n))]))
        at += int(n)
    return out


def run_clips(card, split_dir: Path, streams, threads: int) -> np.ndarray:
    """Tags [N, n_tags] of every window, each clip one stream, one window a call."""
    runner = IncrementalRunner(card, max_batch=8, threads=threads, split_dir=split_dir)
    tags = [runner.run([(clip_id, w)])["tags"][0] for clip_id, ws in streams for w in ws]
    runner.close()
    return np.array(tags)


# -- variants ---------------------------------------------------------------------------------


def ort_variants(frame_src: Path, calib: np.ndarray, work: Path) -> dict[str, Path]:
    """ONNX Runtime's own quantisers on the frame graph, for comparison."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    patches = np.concatenate([np.lib.stride_tricks.sliding_window_view(w, 7, axis=0)
                              .transpose(0, 2, 1) for w in calib]).astype(np.float32)

    class Patches(CalibrationDataReader):
        def __init__(self) -> None:
            self.calls = iter({"context": patches[i : i + 32]}
                              for i in range(0, len(patches) - 31, 32))

        def get_next(self):
            return next(self.calls, None)

    pre = work / "frame_pre.onnx"
    quant_pre_process(str(frame_src), str(pre))
    u8, s8 = QuantType.QUInt8, QuantType.QInt8
    static = {
        "ort_qdq_u8s8_pc": {"quant_format": QuantFormat.QDQ, "per_channel": True,
                                "activation_type": u8, "weight_type": s8},
        "ort_qop_u8s8_pc_rr_conv": {"quant_format": QuantFormat.QOperator, "per_channel": True,
                                        "reduce_range": True, "activation_type": u8,
                                        "weight_type": s8, "op_types_to_quantize": ["Conv"]},
        "ort_qop_u8u8": {"quant_format": QuantFormat.QOperator, "activation_type": u8,
                             "weight_type": u8},
    }
    out = {}
    for name, options in static.items():
        out[name] = work / f"{name}.onnx"
        quantize_static(str(pre), str(out[name]), Patches(), **options)
    out["ort_dynamic_u8u8"] = work / "ort_dynamic_u8u8.onnx"
    quantize_dynamic(str(pre), str(out["ort_dynamic_u8u8"]), weight_type=u8,
                     op_types_to_quantize=["Conv"])
    return out


def qlinear_pooled(frame_src: Path, calib: np.ndarray, dst: Path) -> Path:
    """The frame graph's Conv → ReduceMax pairs as QLinearConv (uint8 × int8: MLAS's u8s8
    kernels, AMX or VNNI where present) → ReduceMax on uint8 → DequantizeLinear per channel.

    QLinearConv's output is 8-bit with one scale per tensor, which cost ONNX Runtime's own
    QOperator graph its accuracy. Here each channel's declared weight scale and int32 bias map
    the only range of it that matters onto 0 … 255: the max over frequency is followed by the
    channel's sign and a ReLU, so that range is [0, max] (sign +1) or [min, 0] (sign -1) of
    the pooled values on the calibration windows; quantisation is monotonic, so pooling the
    uint8 values is pooling the values. The input is quantised with the shipped scheme's fixed
    scale; weights are symmetric int8 per output channel."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(frame_src))
    graph = model.graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    pairs = [(node, consumers[node.output[0]][0]) for node in graph.node
             if node.op_type == "Conv" and [c.op_type for c in consumers[node.output[0]]]
             == ["ReduceMax"]]
    probe = onnx.load(str(frame_src))
    probe.graph.output.extend(helper.make_tensor_value_info(pool.output[0], TensorProto.FLOAT,
                                                            None) for _, pool in pairs)
    session = ort.InferenceSession(probe.SerializeToString(), session_options(threads=1),
                                   providers=["CPUExecutionProvider"])
    names = [pool.output[0] for _, pool in pairs]
    pooled = [session.run(names, {"context": calib[i : i + 16]}) for i in range(0, len(calib), 16)]
    low = {n: np.min([p[k].min(axis=(0, 2)) for p in pooled], axis=0) for k, n in enumerate(names)}
    high = {n: np.max([p[k].max(axis=(0, 2)) for p in pooled], axis=0) for k, n in enumerate(names)}
    input_range = calibrated_range(calib)
    extra, quantised_inputs, replaced = [], {}, set()
    nodes = []
    for node in graph.node:
        pool = next((p for c, p in pairs if c is node), None)
        if pool is None:
            if all(p is not node for _, p in pairs):
                nodes.append(node)
            continue
        x, w, b = node.input
        if x not in quantised_inputs:
            scale, zero = uint8_quantisation(*batchnorm_range(producers.get(x), arrays,
                                                                input_range))
            quantised_inputs[x] = (f"{x}_u8", f"{x}_scale", f"{x}_zero", scale)
            extra += [numpy_helper.from_array(np.array(scale, np.float32), f"{x}_scale"),
                      numpy_helper.from_array(np.array(zero, np.uint8), f"{x}_zero")]
            nodes.append(helper.make_node("QuantizeLinear", [x, f"{x}_scale", f"{x}_zero"],
                                          [f"{x}_u8"]))
        xq, x_scale_name, x_zero_name, x_scale = quantised_inputs[x]
        sign = arrays[consumers[pool.output[0]][0].input[1]].reshape(-1)
        m = pool.output[0]
        start = np.where(sign > 0, 0.0, np.minimum(low[m], 0.0))
        width = np.maximum(np.where(sign > 0, np.maximum(high[m], 0.0), 0.0) - start, 1e-3)
        weight, bias = arrays[w], arrays[b]
        peak = np.abs(weight).reshape(len(weight), -1).max(axis=1)
        # a dead filter (weights ~0) still needs its bias to fit int32
        w_scale = np.maximum(peak / 127, np.abs(bias - start) / (x_scale * 2**24))
        w_scale = w_scale.astype(np.float32)
        wq = np.round(weight / w_scale.reshape(-1, 1, 1, 1)).astype(np.int8)
        p = node.name
        extra += [
            numpy_helper.from_array(wq, f"{p}_w"),
            numpy_helper.from_array((w_scale / width).astype(np.float32), f"{p}_w_scale"),
            numpy_helper.from_array(np.zeros(len(wq), np.int8), f"{p}_w_zero"),
            numpy_helper.from_array(np.array(1 / 255, np.float32), f"{p}_y_scale"),
            numpy_helper.from_array(np.array(0, np.uint8), f"{p}_y_zero"),
            numpy_helper.from_array(np.round((bias - start) / (x_scale * w_scale))
                                    .astype(np.int32), f"{p}_bias"),
            numpy_helper.from_array((width / 255).astype(np.float32), f"{p}_d_scale"),
            numpy_helper.from_array(np.round(-start / (width / 255)).clip(0, 255)
                                    .astype(np.uint8), f"{p}_d_zero")]
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pool_attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        nodes += [
            helper.make_node("QLinearConv", [xq, x_scale_name, x_zero_name, f"{p}_w",
                                             f"{p}_w_scale", f"{p}_w_zero", f"{p}_y_scale",
                                             f"{p}_y_zero", f"{p}_bias"], [f"{p}_u8"],
                             **conv_attrs),
            helper.make_node("ReduceMax", [f"{p}_u8"], [f"{p}_max"], **pool_attrs),
            helper.make_node("DequantizeLinear", [f"{p}_max", f"{p}_d_scale", f"{p}_d_zero"],
                             [m], axis=1)]
        replaced |= {w, b}
    save_rewritten(model, nodes, extra, dst, replaced=replaced)
    return dst


def split_dir_with_frame(card, frame_graph: Path, out_dir: Path) -> Path:
    """A split card for `frame_graph` beside the fp32 window graph, loadable by the runner."""
    from streamclf.models.card import sha256_file

    document = json.loads((SPLIT_DIR / f"{card.name}.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = out_dir / f"{card.name}.frame.onnx"
    frame.write_bytes(frame_graph.read_bytes())
    document["frame"] = {"file": frame.name, "sha256": sha256_file(frame)}
    document["window"]["file"] = os.path.relpath(SPLIT_DIR / document["window"]["file"], out_dir)
    (out_dir / f"{card.name}.json").write_text(json.dumps(document))
    return out_dir


# -- profile ----------------------------------------------------------------------------------


def frame_call(frames: np.ndarray) -> np.ndarray:
    """The frame graph's input for one call: the 7-frame patches around 32 frames of a window."""
    return np.ascontiguousarray(
        np.lib.stride_tricks.sliding_window_view(frames, 7, axis=0).transpose(0, 2, 1)[:32])


def profile(variants: dict[str, Path], card, frames: np.ndarray, threads: int,
            work: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{variant: {graph: {operator (provider): ms per call}}} from ONNX Runtime's profiler: the
    frame graph at 32 patches a call, the window graph at one window a call. The sessions take
    turns call by call, so machine load falls on all alike; the first calls are warm-up, left
    out. A graph file shared by several variants is profiled once."""
    import onnxruntime as ort

    warmup, calls = 5, 20
    docs = {name: json.loads((d / f"{card.name}.json").read_text())
            for name, d in variants.items()}
    any_doc = next(iter(docs.values()))
    feeds = {
        "frame": lambda w: {"context": frame_call(w)},
        "window": lambda w: {"logmel": w[None], "core": np.zeros(
            (1, any_doc["core_frames"], any_doc["timbral_dim"]), np.float32)},
    }
    result: dict = {name: {} for name in variants}
    for part, feed in feeds.items():
        files = {name: (variants[name] / docs[name][part]["file"]).resolve()
                 for name in variants}
        sessions = {}
        for path in dict.fromkeys(files.values()):
            options = session_options(threads=threads, mem_pattern=True)
            options.enable_profiling = True
            options.profile_file_prefix = str(work / f"profile-{part}-{len(sessions)}")
            sessions[path] = ort.InferenceSession(str(path), options,
                                                  providers=["CPUExecutionProvider"])
        for w in frames[: warmup + calls]:
            for session in sessions.values():
                session.run(None, feed(w))
        per_file = {path: per_operator(Path(session.end_profiling()), warmup, calls)
                    for path, session in sessions.items()}
        for name, path in files.items():
            result[name][part] = per_file[path]
    return result


def per_operator(trace: Path, warmup: int, calls: int) -> dict[str, float]:
    """ms per call by operator (provider) in an ONNX Runtime profile, after `warmup` runs."""
    events = json.loads(trace.read_text())
    runs = [e["ts"] for e in events if e.get("name") == "model_run"]
    per_op = defaultdict(float)
    for event in events:
        if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                and event["ts"] >= runs[warmup]):
            args = event["args"]
            per_op[f"{args['op_name']} ({args.get('provider', '?')[:3]})"] += event["dur"]
    return {op: us / calls / 1000 for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])}


# -- speed ------------------------------------------------------------------------------------


def speed(card, variants: dict[str, Path], streams, *, threads: int, rounds: int,
          n_streams: int, n_windows: int) -> dict:
    """Windows/s of each variant per round; variants take turns in rotated order each round."""
    runners = {name: IncrementalRunner(card, max_batch=n_streams, threads=threads, split_dir=d)
               for name, d in variants.items()}
    chosen = streams[:: max(1, len(streams) // n_streams)][:n_streams]
    rates = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            runner = runners[name]
            runner.reset()
            runner.run([(cid, ws[0]) for cid, ws in chosen])  # fill the rings
            start = time.perf_counter()
            for i in range(1, n_windows + 1):
                runner.run([(cid, ws[i]) for cid, ws in chosen])
            rates[name].append(n_windows * len(chosen) / (time.perf_counter() - start))
    for runner in runners.values():
        runner.close()
    fp32 = np.array(rates["fp32"])
    return {name: {"windows_per_s_median": float(np.median(r)), "windows_per_s_best": max(r),
                   "ratio_median": float(np.median(np.array(r) / fp32)),
                   "ratio_best_vs_best": max(r) / fp32.max(), "rounds": r}
            for name, r in rates.items()}


# -- report -----------------------------------------------------------------------------------


def render_markdown(doc: dict) -> str:
    cpu = doc["cpu"]
    lines = [
        f"# int8 vs fp32, incremental runner at a 1 s hop ({doc['model']})", "",
        f"Command: `{doc['command']}`", "",
        (f"CPU: {cpu['model']}, {cpu['cores']} cores for this process; flags seen: "
        f"{', '.join(cpu['flags']) or 'none of ' + ', '.join(SHOWN_FLAGS)}; int8 dot product: "
        f"{cpu['int8_dot_product'] or 'none'}. Load average at start {cpu['loadavg'][0]:.1f}, "
        f"at end {doc['loadavg_end'][0]:.1f}. onnxruntime {doc['onnxruntime']}. "
        f"Took {doc['seconds']:.0f} s."), "",
        (f"Accuracy: of {doc['windows']} windows ({doc['clips']} clips of {doc['dataset']}, "
         "each clip one stream; ONNX Runtime's own variants on every "
         f"{doc['ort_every']}th clip), against fp32. Speed: {doc['speed_setup']}; ratios are "
         "per round (same load), medians."), "",
        ("| variant | windows scored | same top (family) | max \\|Δp\\| | mean \\|Δp\\| "
         "| windows/s (median) | × fp32 (median of rounds) | meets accuracy | meets 1.5× |"),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, v in doc["variants"].items():
        acc, spd = v.get("accuracy"), v["speed"]
        acc_cells = ("(reference)", "", "", "") if acc is None else (
            str(acc["windows"]), f"{acc['same_top']:.4f}", f"{acc['max_abs_dp']:.4f}",
            f"{acc['mean_abs_dp']:.5f}")
        lines.append(f"| {name} | {' | '.join(acc_cells)} | {spd['windows_per_s_median']:.1f} | "
                     f"{spd['ratio_median']:.2f} | {v.get('meets_accuracy', '')} | "
                     f"{v.get('meets_speed', '')} |")
    lines += ["", "## Per operator (ONNX Runtime's profiler, ms per call)", ""]
    for part, what in (("frame", "frame graph, 32 patches a call"),
                       ("window", "window graph, one window a call")):
        lines += [f"{what}:", "", profile_table(doc["variants"], part), ""]
    return "\n".join(lines) + "\n"


def profile_table(variants: dict, part: str, *, shown_ms: float = 0.2) -> str:
    """One row per operator (kernel, provider) taking `shown_ms` or more in some variant, the
    rest summed in one row; one column per variant; the total."""
    names = list(variants)
    times = {n: variants[n]["profile"][part] for n in names}
    ops = list(dict.fromkeys(op for n in names for op in times[n]))
    shown = [op for op in ops if max(times[n].get(op, 0.0) for n in names) >= shown_ms]
    rest = [op for op in ops if op not in shown]
    rows = ["| operator | " + " | ".join(names) + " |",
            "| --- |" + " ---: |" * len(names)]
    for op in shown:
        cells = [f"{times[n][op]:.2f}" if op in times[n] else "" for n in names]
        rows.append(f"| {op} | " + " | ".join(cells) + " |")
    if rest:
        cells = [f"{sum(times[n].get(op, 0.0) for op in rest):.2f}" for n in names]
        rows.append(f"| {len(rest)} others | " + " | ".join(cells) + " |")
    totals = [f"**{sum(variants[n]['profile'][part].values()):.2f}**" for n in names]
    rows.append("| total | " + " | ".join(totals) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for int8.json, int8.md")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "streamclf" / "int8-eval")
    parser.add_argument("--dataset", type=Path, default=Path("datasets/genres"))
    parser.add_argument("--model", default="fused_musicnn")
    parser.add_argument("--threads", type=int, default=0, help="0: the cores we may use")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--streams", type=int, default=4, help="streams in the speed test")
    parser.add_argument("--windows", type=int, default=12, help="windows per stream per round")
    parser.add_argument("--max-clips", type=int, default=0, help="0: every clip")
    parser.add_argument("--no-ort", action="store_true",
                        help="skip ONNX Runtime's own quantisers (comparison variants)")
    parser.add_argument("--ort-clips", type=int, default=18,
                        help="clips (evenly spread) the comparison variants are scored on; "
                             "the shipped scheme gets every clip")
    args = parser.parse_args(argv)
    import onnxruntime

    configure_logging("warning")
    started = time.perf_counter()
    cpu = cpu_report()
    print(f"cpu: {cpu['model']}; flags seen: {', '.join(cpu['flags'])}; "
          f"int8 dot product: {cpu['int8_dot_product']}", flush=True)
    threads = args.threads or default_threads()
    card = load_model_card(args.model)
    frames, starts, clips = cached_windows(args.dataset, args.cache)
    streams = clip_streams(frames, starts, clips)
    calib = np.stack([w.frames for (_, ws), (_, split, _) in zip(streams, clips, strict=True)
                      if split == "calib" for w in ws])
    if args.max_clips:
        streams = streams[:: max(1, len(streams) // args.max_clips)][: args.max_clips]
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="int8-eval-"))
    variants = {"fp32": SPLIT_DIR}
    variants["int8"] = write_int8_split(
        card, windows=calib, calibration=f"{len(calib)} calib windows", out_dir=work / "int8",
        split_dir=SPLIT_DIR, builder="tools/int8_eval.py").parent
    variants["qlinear_pooled"] = split_dir_with_frame(
        card, qlinear_pooled(SPLIT_DIR / json.loads((SPLIT_DIR / f"{card.name}.json")
                                                    .read_text())["frame"]["file"],
                             calib, work / "qlinear_pooled.onnx"), work / "qlinear_pooled")
    if not args.no_ort:
        spread = calib[np.linspace(0, len(calib) - 1, CALIB_WINDOWS_ORT).astype(int)]
        document = json.loads((SPLIT_DIR / f"{card.name}.json").read_text())
        for name, graph in ort_variants(SPLIT_DIR / document["frame"]["file"], spread,
                                        work).items():
            variants[name] = split_dir_with_frame(card, graph, work / name)
    print(f"variants: {', '.join(variants)}", flush=True)

    n_windows = sum(len(ws) for _, ws in streams)
    ort_every = max(1, len(streams) // args.ort_clips)
    ort_windows = np.concatenate([np.full(len(ws), k % ort_every == 0)
                                  for k, (_, ws) in enumerate(streams)])
    reference_key = hashlib.sha256(frames[:: 97].tobytes()).hexdigest()[:12]
    ref_path = args.cache / f"fp32-{card.name}-{reference_key}-{len(streams)}.npy"
    if ref_path.exists():
        reference = np.load(ref_path)
    else:
        reference = run_clips(card, SPLIT_DIR, streams, threads)
        np.save(ref_path, reference)
    doc = {"model": card.name, "command": " ".join(["python tools/int8_eval.py",
                                                     *(sys.argv[1:] if argv is None else argv)]),
           "cpu": cpu, "onnxruntime": onnxruntime.__version__, "dataset": str(args.dataset),
           "clips": len(streams), "windows": n_windows, "ort_every": ort_every, "variants": {}}
    profiles = profile(variants, card, frames, threads, work)
    for name, split_dir in variants.items():
        entry = {"profile": profiles[name]}
        if name != "fp32":
            ort = name.startswith("ort_")
            scored = ort_windows if ort else np.ones(n_windows, bool)
            tags = run_clips(card, split_dir, streams[::ort_every] if ort else streams, threads)
            diff = np.abs(tags - reference[scored])
            entry["accuracy"] = {
                "windows": int(scored.sum()),
                "same_top": float((tags.argmax(1) == reference[scored].argmax(1)).mean()),
                "max_abs_dp": float(diff.max()), "mean_abs_dp": float(diff.mean())}
            entry["meets_accuracy"] = (entry["accuracy"]["same_top"] >= MIN_SAME
                                       and entry["accuracy"]["max_abs_dp"] <= MAX_ABS_DP)
        doc["variants"][name] = entry
        print(f"{name}: {entry.get('accuracy', 'reference')}", flush=True)
    rates = speed(card, variants, streams, threads=threads, rounds=args.rounds,
                  n_streams=args.streams, n_windows=args.windows)
    for name, rate in rates.items():
        doc["variants"][name]["speed"] = rate
        if name != "fp32":
            doc["variants"][name]["meets_speed"] = rate["ratio_median"] >= MIN_SPEED_UP
        print(f"{name}: {rate['windows_per_s_median']:.1f} windows/s, "
              f"{rate['ratio_median']:.2f}x fp32", flush=True)
    doc["speed_setup"] = (f"{args.streams} streams, one window of each per call, "
                          f"{args.windows} calls per round, {args.rounds} rounds, "
                          f"{threads} threads")
    doc["loadavg_end"] = os.getloadavg()
    doc["seconds"] = time.perf_counter() - started
    (args.out / "int8.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "int8.md").write_text(render_markdown(doc))
    print(f"wrote {args.out / 'int8.json'} and {args.out / 'int8.md'}")
    return 0


if __name__ == "__main__":
    from streamclf.errors import StreamclfError

    try:
        raise SystemExit(main())
    except (StreamclfError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
