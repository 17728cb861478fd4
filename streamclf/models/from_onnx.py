"""musicnn in torch with the weights of a shipped ONNX file: the port meets the exported graph.

The exporter writes Conv, BatchNormalization and Gemm nodes in execution order, so the n-th
such node holds the weights of the n-th such module that the forward pass calls; every shape
is checked, and any mismatch is a ModelError, never a silent partial load. The torch engine,
the fused default, the split graphs and trained heads all start from these weights, so torch
runs exactly the parameters the other engines run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamclf.errors import ModelError
from streamclf.features.mel import N_MELS, WINDOW_FRAMES

# ONNX op → (torch module class names, the parameter each node input after X fills)
_WEIGHT_INPUTS = {
    "Conv": (("Conv1d", "Conv2d"), ("weight", "bias")),
    "BatchNormalization": (
        ("BatchNorm1d", "BatchNorm2d"),
        ("weight", "bias", "running_mean", "running_var"),
    ),
    "Gemm": (("Linear",), ("weight", "bias")),
}


def onnx_constants(graph) -> dict[str, np.ndarray]:
    """Every constant tensor of a graph by name: initializers, Constant nodes, their Identities."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def modules_in_call_order(model) -> list[tuple[str, object]]:
    """(qualified name, module) of each Conv/BatchNorm/Linear in the order forward() calls them."""
    import torch

    wanted = {cls for classes, _ in _WEIGHT_INPUTS.values() for cls in classes}
    order: list[tuple[str, object]] = []
    hooks = [
        module.register_forward_pre_hook(lambda m, _args, name=name: order.append((name, m)))
        for name, module in model.named_modules()
        if type(module).__name__ in wanted
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, WINDOW_FRAMES, N_MELS))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def state_from_onnx(model, path: Path) -> dict[str, object]:
    """A state dict for `model` holding the weights of the ONNX file at `path`."""
    import onnx
    import torch

    graph = onnx.load(str(path)).graph
    constants = onnx_constants(graph)
    pending = {op: [n for n in graph.node if n.op_type == op] for op in _WEIGHT_INPUTS}
    state = {}
    for name, module in modules_in_call_order(model):
        op = next(
            op for op, (classes, _) in _WEIGHT_INPUTS.items() if type(module).__name__ in classes
        )
        if not pending[op]:
            msg = f"{path}: no {op} node left for {name}; the ONNX graph is not this architecture"
            raise ModelError(msg)
        node = pending[op].pop(0)
        transposed_b = any(a.name == "transB" and a.i for a in node.attribute)
        for param, source in zip(_WEIGHT_INPUTS[op][1], node.input[1:], strict=False):
            value = constants.get(source)
            if op == "Gemm" and param == "weight" and value is not None and not transposed_b:
                value = value.T
            target = getattr(module, param)
            if value is None or tuple(value.shape) != tuple(target.shape):
                msg = f"{path}: {node.name or op} does not fit {name}.{param} {tuple(target.shape)}"
                raise ModelError(msg)
            state[f"{name}.{param}"] = torch.from_numpy(np.array(value, dtype=np.float32))
    left = sum(len(nodes) for nodes in pending.values())
    if left:
        msg = f"{path}: {left} weighted node(s) left over; the ONNX graph is not this architecture"
        raise ModelError(msg)
    return state


def load_torch_from_onnx(path: Path):
    """The streamclf.models.musicnn port of the stock model `path` names, with the file's weights."""
    from streamclf.models.musicnn import ARCHITECTURES, build_model

    if path.stem not in ARCHITECTURES:
        msg = f"{path}: torch engine knows {', '.join(ARCHITECTURES)}, not '{path.stem}'"
        raise ModelError(msg)
    model = build_model(path.stem)
    model.load_state_dict(state_from_onnx(model, path), strict=False)
    return model.eval()
