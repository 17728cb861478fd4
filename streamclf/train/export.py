"""One ONNX model of musicnn and a trained head, with its card, loadable like the stock models.

The exported graph keeps the stock contract: input `logmel` [B, 187, 96], outputs `tags`
[B, C] (the head's softmax over the classes, one window each) and `embedding` [B, 200] (the
backbone's, unchanged). The card's labels and genres are both the classes, so the daemon's
smoother, feed and `classify` use them as they use a stock model's genre tags.
The backbone's weights are read from the stock ONNX file (`load_torch_from_onnx`), so the
custom model embeds exactly what the embeddings were cached from.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import nn

from streamclf.errors import ModelError
from streamclf.models import card as cards
from streamclf.models.importer import (
    ONNX_TOLERANCE,
    export_onnx,
    max_abs_error,
    onnx_predictor,
    parity_batch,
    torch_predictor,
)
from streamclf.models.musicnn import load_torch_from_onnx
from streamclf.train.heads import build_head

log = structlog.get_logger(__name__)

HEAD_PREFIX = "head."


class CustomTagger(nn.Module):
    """musicnn backbone + head: logmel [B, 187, 96] → (class probs [B, C], embedding [B, D])."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, embedding = self.backbone(logmel)
        return torch.softmax(self.head(embedding.unsqueeze(1)), dim=1), embedding


def custom_card_document(
    *,
    base: cards.ModelCard,
    name: str,
    onnx_path: Path,
    classes: tuple[str, ...],
    head: dict[str, Any],
    training: dict[str, Any],
    parity: dict[str, float],
) -> dict[str, Any]:
    """The base model's card with the head's classes, outputs, file, and how it was trained."""
    document = copy.deepcopy(base.document)
    document.update(
        {
            "name": name,
            "architecture": f"{base.document['architecture']}+{head['kind']}",
            "base_model": {
                "name": base.name,
                "sha256": base.sha256,
                "embedding": base.document["outputs"]["embedding"],
            },
            "head": head,
            "training": training,
            "labels": list(classes),
            "genres": list(classes),
            "onnx": {
                "file": onnx_path.name,
                "sha256": cards.sha256_file(onnx_path),
                "bytes": onnx_path.stat().st_size,
            },
            "parity": parity,
        }
    )
    document["outputs"]["tags"] = {
        "dtype": "float32",
        "shape": ["batch", len(classes)],
        "activation": "softmax",
        "description": "class probabilities of one window (the trained head)",
    }
    return document


def export_custom(
    head: nn.Module,
    *,
    base: cards.ModelCard,
    classes: tuple[str, ...],
    out: str | Path,
    head_spec: dict[str, Any],
    training: dict[str, Any],
) -> cards.ModelCard:
    """Write `out` (.onnx) and its card beside it; check ONNX Runtime against torch first."""
    onnx_path = Path(out).with_suffix(".onnx")
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    model = CustomTagger(load_torch_from_onnx(base.onnx_path), head).eval()
    export_onnx(model, onnx_path)
    logmel = parity_batch()
    want = torch_predictor(model)(logmel)
    error = max_abs_error(onnx_predictor(onnx_path)(logmel), want)
    if error > ONNX_TOLERANCE:
        msg = f"{onnx_path}: ONNX export differs from PyTorch by {error:.2g}"
        raise ModelError(msg)
    document = custom_card_document(
        base=base,
        name=onnx_path.stem,
        onnx_path=onnx_path,
        classes=classes,
        head=head_spec,
        training=training,
        parity={"onnx_vs_torch_max_abs": error},
    )
    card_path = onnx_path.with_suffix(".json")
    card_path.write_text(json.dumps(document, indent=2) + "\n")
    log.info(
        "custom_model_exported",
        onnx=str(onnx_path),
        card=str(card_path),
        classes=len(classes),
        onnx_vs_torch_max_abs=error,
    )
    return cards.load_model_card(card_path)


def head_state_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """The head's parameters and buffers, by name, from the exported graph's initializers."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return {
        t.name[len(HEAD_PREFIX) :]: torch.from_numpy(np.array(numpy_helper.to_array(t), np.float32))
        for t in graph.initializer
        if t.name.startswith(HEAD_PREFIX)
    }


def load_torch_custom(path: str | Path) -> CustomTagger:
    """The torch model of an exported custom ONNX file (backbone from its base model's file).

    The head's weights come from the file itself; the result is checked against the file in
    ONNX Runtime, so a file this code cannot rebuild exactly raises ModelError.
    """
    card = cards.load_model_card(path)
    spec = card.document.get("head")
    if not spec:
        msg = f"{card.onnx_path}: not a custom model (its card has no 'head')"
        raise ModelError(msg)
    base = cards.load_model_card(card.document["base_model"]["name"])
    if base.sha256 != card.document["base_model"]["sha256"]:
        msg = f"{card.onnx_path}: base model {base.name} is not the one it was trained on"
        raise ModelError(msg)
    head = build_head(
        spec["kind"],
        dim=spec["dim"],
        n_classes=len(card.labels),
        hidden=spec["hidden"],
        dropout=0.0,
    )
    try:
        head.load_state_dict(head_state_from_onnx(card.onnx_path))
    except RuntimeError as exc:
        msg = f"{card.onnx_path}: head weights do not fit a {spec['kind']} head"
        raise ModelError(msg) from exc
    model = CustomTagger(load_torch_from_onnx(base.onnx_path), head.eval()).eval()
    logmel = parity_batch(2)
    error = max_abs_error(torch_predictor(model)(logmel), onnx_predictor(card.onnx_path)(logmel))
    if error > ONNX_TOLERANCE:
        msg = f"{card.onnx_path}: rebuilt torch model differs from the file by {error:.2g}"
        raise ModelError(msg)
    return model
