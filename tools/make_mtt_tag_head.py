#!/usr/bin/env python3
"""Write engines/mtt_tag_head.npz: MagnaTagATune's last layer, to read its tags off an embedding.

The fused default (and MTT_musicnn) publish a 200-value MTT embedding per window; musicnn's MTT
tags are `sigmoid(embedding @ weight.T + bias)` on it (the graph's `/mtt/classifier/Gemm`).
The content stage (streamclf/content.py) reads its instrument and voice tags this way, so the
engine's outputs stay as they are and the daemon needs no onnx package. Needs the train extra.

    .venv/bin/python tools/make_mtt_tag_head.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ENGINES = Path(__file__).resolve().parent.parent / "engines"


def main() -> None:
    graph = onnx.load(ENGINES / "fused_musicnn.onnx").graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    labels = json.loads((ENGINES / "fused_musicnn.json").read_text())["outputs"]["mtt_tags"]
    np.savez(ENGINES / "mtt_tag_head.npz", weight=weights["mtt.classifier.weight"],
             bias=weights["mtt.classifier.bias"], labels=np.array(labels["labels"]))


if __name__ == "__main__":
    main()
