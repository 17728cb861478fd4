"""The musicnn 0.1.0 taggers (Pons & Serra, 2019) as PyTorch modules, for inference only.

They reproduce `musicnn/models.py` (TensorFlow 1 layers, NHWC) in eval mode: batch norm on the
moving statistics with tf.compat.v1.layers' epsilon 0.001, no dropout. Internally the tensors
are channel-first; where TensorFlow's layout decides an order (the backend's interleaved
max/mean pooling, the VGG's NHWC flatten) the modules rebuild that order explicitly.
Every network maps `logmel` [batch, 187, 96] to (`tags` [batch, 50] sigmoid probabilities,
`embedding` [batch, D] penultimate features). `load_torch_from_onnx` gives a network the
weights of its shipped ONNX file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamclf.errors import ModelError
from streamclf.features.mel import WINDOW_FRAMES

TF_BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization default
N_MELS = 96
N_TAGS = 50


def batch_norm(num_features: int, *, dims: int) -> nn.Module:
    """A batch norm with TensorFlow's epsilon, always on its moving statistics."""
    cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    return cls(num_features, eps=TF_BN_EPS)


def tf_same_padding(kernel: int) -> tuple[int, int]:
    """(before, after) padding of TF 'same' at stride 1: the extra one goes after."""
    total = kernel - 1
    return total // 2, total - total // 2


class TimbralBlock(nn.Module):
    """Conv over (7 frames × a mel band span), relu, bn, max over the remaining frequencies.

    x [B, 1, T + 6, 96] (time already zero-padded by 3 each side) → [B, filters, T].
    """

    def __init__(self, *, filters: int, freq_span: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, filters, kernel_size=(7, freq_span))
        self.bn = batch_norm(filters, dims=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x))).amax(dim=3)


class TemporalBlock(nn.Module):
    """Conv over (k frames × 1 band) with TF 'same' time padding, relu, bn, max over frequency.

    x [B, 1, T, 96] → [B, filters, T].
    """

    def __init__(self, *, filters: int, frames: int) -> None:
        super().__init__()
        self.pad_frames = tf_same_padding(frames)
        self.conv = nn.Conv2d(1, filters, kernel_size=(frames, 1))
        self.bn = batch_norm(filters, dims=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, *self.pad_frames))
        return self.bn(F.relu(self.conv(x))).amax(dim=3)


class MidendLayer(nn.Module):
    """A 7-frame conv across all features (TF: a [7, C] kernel on [B, T, C, 1]), relu, bn.

    x [B, C, T] → [B, filters, T].
    """

    def __init__(self, *, in_features: int, filters: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_features, filters, kernel_size=7, padding=3)
        self.bn = batch_norm(filters, dims=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class Musicnn(nn.Module):
    """musicnn: timbral + temporal front-end, residual mid-end, max/mean pooled dense back-end.

    logmel [B, T, 96] → (tags [B, 50], embedding [B, backend_units]); T is 187 for the
    shipped models, though the architecture accepts any length.
    """

    def __init__(
        self, *, midend_filters: int = 64, backend_units: int = 200, num_classes: int = N_TAGS
    ) -> None:
        super().__init__()
        timbral_filters = int(1.6 * 128)
        temporal_filters = int(1.6 * 32)
        self.input_bn = batch_norm(1, dims=2)
        self.timbral = nn.ModuleList(
            TimbralBlock(filters=timbral_filters, freq_span=int(share * N_MELS))
            for share in (0.4, 0.7)
        )
        self.temporal = nn.ModuleList(
            TemporalBlock(filters=temporal_filters, frames=frames) for frames in (128, 64, 32)
        )
        frontend_features = 2 * timbral_filters + 3 * temporal_filters
        self.midend = nn.ModuleList(
            [
                MidendLayer(in_features=frontend_features, filters=midend_filters),
                MidendLayer(in_features=midend_filters, filters=midend_filters),
                MidendLayer(in_features=midend_filters, filters=midend_filters),
            ]
        )
        pooled = 2 * (frontend_features + 3 * midend_filters)
        self.pool_bn = batch_norm(pooled, dims=1)
        self.dense = nn.Linear(pooled, backend_units)
        self.dense_bn = batch_norm(backend_units, dims=1)
        self.classifier = nn.Linear(backend_units, num_classes)

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.input_bn(logmel.unsqueeze(1))  # [B, 1, T, 96]
        padded = F.pad(x, (0, 0, 3, 3))
        frontend = torch.cat(
            [block(padded) for block in self.timbral] + [block(x) for block in self.temporal],
            dim=1,
        )  # [B, 561, T]
        return self.head(frontend)

    def head(self, frontend: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mid-end and back-end from the front-end features [B, 561, T] (the split graphs'
        per-window part reuses it)."""
        conv1 = self.midend[0](frontend)
        res2 = self.midend[1](conv1) + conv1
        res3 = self.midend[2](res2) + res2
        features = torch.cat([frontend, conv1, res2, res3], dim=1)  # [B, 753, T]
        # TF concatenates max and mean on a trailing axis and flattens: feature-major, interleaved.
        pooled = torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)
        embedding = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return torch.sigmoid(self.classifier(embedding)), embedding


class Vgg(nn.Module):
    """The musicnn package's VGG baseline: five 3×3 conv/bn/max-pool stages and one dense layer.

    logmel [B, 187, 96] → (tags [B, 50], embedding [B, 256]); the embedding is the flattened
    pool5 (what `musicnn.extractor` returns as 'pool5'), in TensorFlow's NHWC order.
    """

    POOLS = (
        ((4, 1), (2, 2)),
        ((2, 2), (2, 2)),
        ((2, 2), (2, 2)),
        ((2, 2), (2, 2)),
        ((4, 4), (4, 4)),
    )

    def __init__(
        self, *, filters: int = 128, num_classes: int = N_TAGS, input_frames: int = 187
    ) -> None:
        super().__init__()
        self.input_bn = batch_norm(1, dims=2)
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else filters, filters, kernel_size=3, padding=1)
            for i in range(len(self.POOLS))
        )
        self.bns = nn.ModuleList(batch_norm(filters, dims=2) for _ in self.POOLS)
        frames, bands = input_frames, N_MELS
        for (kt, kf), (st, sf) in self.POOLS:
            frames, bands = (frames - kt) // st + 1, (bands - kf) // sf + 1
        self.classifier = nn.Linear(filters * frames * bands, num_classes)

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.input_bn(logmel.unsqueeze(1))  # [B, 1, T, 96]
        for conv, bn, (kernel, stride) in zip(self.convs, self.bns, self.POOLS, strict=True):
            x = F.max_pool2d(bn(F.relu(conv(x))), kernel_size=kernel, stride=stride)
        embedding = x.permute(0, 2, 3, 1).flatten(1)  # NHWC flatten, as TF's dense expects
        return torch.sigmoid(self.classifier(embedding)), embedding


ARCHITECTURES = {
    "MTT_musicnn": Musicnn,
    "MSD_musicnn": Musicnn,
    "MTT_vgg": Vgg,
    "MSD_vgg": Vgg,
}


def build_model(name: str) -> nn.Module:
    """An untrained network of the architecture of model `name`, in eval mode."""
    return ARCHITECTURES[name]().eval()

# -- the weights of a shipped ONNX file ------------------------------------------------------
# The exporter writes Conv, BatchNormalization and Gemm nodes in execution order, so the n-th
# such node holds the weights of the n-th such module that the forward pass calls; every shape
# is checked, and any mismatch is a ModelError, never a silent partial load. The torch engine,
# the fused default, the split graphs and trained heads all start from these weights, so torch
# runs exactly the parameters the other engines run.

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
    """The streamclf.models.musicnn port of the stock model `path` names, with the file's
    weights."""
    if path.stem not in ARCHITECTURES:
        msg = f"{path}: torch engine knows {', '.join(ARCHITECTURES)}, not '{path.stem}'"
        raise ModelError(msg)
    model = build_model(path.stem)
    model.load_state_dict(state_from_onnx(model, path), strict=False)
    return model.eval()
