"""The unknown threshold a running daemon uses: the model card's unless the config sets one, at
start and after a reload (docs/config.md, `[smoothing] unknown_threshold`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from streamclf.config import parse_config
from streamclf.models.card import load_model_card
from streamclf.pipeline import Pipeline

CLIP = Path(__file__).resolve().parent.parent / "streamclf" / "data" / "clip.ogg"
CARD_THRESHOLD = 0.61  # neither the fallback 0.35 nor the shipped default's


def card_with_threshold(folder: Path) -> Path:
    """The default model's card and graph in `folder`, its card naming CARD_THRESHOLD."""
    card = load_model_card()
    shutil.copy(card.onnx_path, folder)
    document = {**card.document, "calibration": {**card.document["calibration"],
                                                 "unknown_threshold": CARD_THRESHOLD}}
    path = folder / card.card_path.name
    path.write_text(json.dumps(document))
    return path


def started(card: Path, smoothing: str) -> Pipeline:
    text = (f'[engine]\nkind = "onnxruntime"\nthreads = 1\nincremental = false\nmodel = "{card}"\n'
            f'{smoothing}[[streams]]\nid = "a"\nsource = "file"\npath = "{CLIP}"\n')
    pipeline = Pipeline(parse_config(text), publish=False)
    pipeline.start()
    return pipeline


def thresholds(pipeline: Pipeline) -> list[float]:
    return [s.smoother.config.unknown_threshold for s in pipeline.streams]


def test_card_threshold_unless_the_config_sets_one(tmp_path):
    card = card_with_threshold(tmp_path)
    pipeline = started(card, "")
    try:
        assert thresholds(pipeline) == [CARD_THRESHOLD]
        explicit = parse_config("[smoothing]\nunknown_threshold = 0.9\n").smoothing
        pipeline.reload(dataclasses.replace(pipeline.config, smoothing=explicit))
        assert thresholds(pipeline) == [0.9]
        pipeline.reload(dataclasses.replace(pipeline.config, smoothing=parse_config("").smoothing))
        assert thresholds(pipeline) == [CARD_THRESHOLD]
    finally:
        pipeline.stop()
    pipeline = started(card, "[smoothing]\nunknown_threshold = 0\n")
    try:
        assert thresholds(pipeline) == [0.0]
    finally:
        pipeline.stop()
