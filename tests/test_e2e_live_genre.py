"""The genre `streamclf listen` publishes when the music changes abruptly: real clips of two
families joined end to end, through the real pipeline (file source, framer, ONNX Runtime on the
fused default, smoother) with the default smoothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from e2e_helpers import REPO, run_cli

from streamclf.config import default_config
from streamclf.models.card import load_model_card
from streamclf.smoothing import SILENCE, UNKNOWN

CLIPS = REPO / "datasets" / "genres" / "clips"
# electronic, then classical: the change after which the feed announced "electronic" at 0.08
JOINED = ["electronic/nexuiz-neuronal-diving", "classical/wesnoth-knolls"]


def genre_messages(tmp_path: Path) -> list[dict]:
    """The genre messages of the joined clips, every window kept (a queue that never drops)."""
    audio = np.concatenate([sf.read(CLIPS / f"{name}.ogg", dtype="float32")[0] for name in JOINED])
    joined = tmp_path / "joined.wav"
    sf.write(joined, audio, 16000)
    config = tmp_path / "keep-every-window.toml"
    config.write_text("[framing]\nqueue_windows = 10000\n")
    proc = run_cli("listen", "--config", str(config), "--file", str(joined), "--fast", "--json",
                   "--no-publish", "--engine", "onnxruntime", timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    genres = [r for r in records if r["topic"] == "genre.main"]
    assert len(genres) >= len(audio) / 16000 - 4  # one per 1 s hop, none dropped
    return genres


def test_changes_publish_no_genre_under_the_threshold_and_do_not_flip(tmp_path):
    card_threshold = load_model_card().unknown_threshold
    threshold = default_config().smoothing.with_card_threshold(card_threshold).unknown_threshold
    messages = genre_messages(tmp_path)
    under = [(m["t1"], m["genre"], round(m["confidence"], 2)) for m in messages
             if m["genre"] not in (UNKNOWN, SILENCE) and m["confidence"] < threshold]
    assert under == []
    published = [m["genre"] for m in messages]
    changes = [(m["t1"], m["genre"]) for m, before in zip(messages[1:], published, strict=False)
               if m["genre"] != before]
    assert len(changes) <= 2 * (len(JOINED) - 1), changes  # each join: old > unknown > new at most
