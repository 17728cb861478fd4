"""Count the floating-point operations of one window through an ONNX model.

Only the multiply-accumulate layers are counted (2 FLOPs per multiply-add): Conv, MatMul and
Gemm hold essentially all of a CNN's arithmetic; batch norm, activations and pooling are a
fraction of a percent and are memory-bound anyway. Shapes are those of a batch of 1, found by
running the graph once. Needs the `onnx` package (dev and train extras).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

COUNTED_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one window: the total and its split by op type."""

    total: int
    by_op: dict[str, int]


def _tensor_shapes(model, names: set[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of `names` at batch 1: weights from the graph, activations by one ONNX Runtime run.

    Running the graph is exact where static shape inference gives up (pads computed in-graph).
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = model.graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = tuple(numpy_helper.to_array(node.attribute[0].t).shape)
    wanted = sorted(names - set(shapes) - {o.name for o in graph.output})
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {}
    for value in session.get_inputs():
        dims = [d if isinstance(d, int) else 1 for d in value.shape]
        feed[value.name] = np.zeros(dims, np.float32)
    outputs = [o.name for o in session.get_outputs()]
    return shapes | {
        name: tuple(a.shape) for name, a in zip(outputs, session.run(outputs, feed), strict=True)
    }


def node_flops(
    op: str, inputs: list[tuple[int, ...]], output: tuple[int, ...], *, trans_a: bool = False
) -> int:
    """FLOPs of one Conv/MatMul/Gemm node from its first two input shapes and its output shape.

    Conv: W [M, C/group, *kernel] → 2 · |Y| · C/group · |kernel|.
    MatMul/Gemm: 2 · |Y| · K, K the contracted axis of A ([M, K], or [K, M] under transA).
    """
    if op == "Conv":
        return 2 * math.prod(output) * math.prod(inputs[1][1:])
    if op == "MatMul":
        return 2 * math.prod(output) * inputs[0][-1]
    if op == "Gemm":
        return 2 * math.prod(output) * (inputs[0][0] if trans_a else inputs[0][1])
    msg = f"no FLOP rule for {op}"
    raise ValueError(msg)


def count_flops(path: str | os.PathLike[str]) -> FlopCount:
    """FLOPs of one window (batch 1) through the model at `path`."""
    import onnx

    model = onnx.load(str(path))
    counted = [node for node in model.graph.node if node.op_type in COUNTED_OPS]
    shapes = _tensor_shapes(model, {name for n in counted for name in (*n.input[:2], n.output[0])})
    by_op = dict.fromkeys(COUNTED_OPS, 0)
    for node in counted:
        inputs = [shapes[name] for name in node.input[:2]]
        output = shapes[node.output[0]]
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        by_op[node.op_type] += node_flops(node.op_type, inputs, output, trans_a=trans_a)
    return FlopCount(total=sum(by_op.values()), by_op=by_op)
