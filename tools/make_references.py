"""Record what the original musicnn 0.1.0 (TensorFlow) computes on the bundled clip.

Run with a throwaway reference environment, never the project's venv (see tools/README.md):

    /tmp/tfref/bin/python tools/make_references.py [--audio CLIP] [--out FIXTURE_DIR]

Writes `logmel.npz` (musicnn's own `batch_data` patches, the first few only, to stay small) and
one `<model>.npz` per model with the taggram and penultimate features of every patch. Every
graph variable is checked against the checkpoint after restoring, because `musicnn.extractor`
hides a failed restore behind a bare `except:` and then runs on random weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

MODELS = ("MTT_musicnn", "MSD_musicnn", "MTT_vgg", "MSD_vgg")
INPUT_LENGTH_S = 3
STORED_PATCHES = 3  # log-mel patches kept in the fixture (~215 KB of float32)


def restored_session(tf, models, config, name: str, n_frames: int):
    """A TF1 session with model `name` restored and verified variable by variable."""
    import musicnn

    tf.compat.v1.reset_default_graph()
    labels = config.MTT_LABELS if name.startswith("MTT") else config.MSD_LABELS
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, n_frames, config.N_MELS])
        is_training = tf.compat.v1.placeholder(tf.bool)
        outputs = models.define_model(x, is_training, name, len(labels))
        tags = tf.nn.sigmoid(outputs[0])
    embedding = outputs[-1] if "vgg" not in name else tf.reshape(outputs[-1], [-1, 256])
    sess = tf.compat.v1.Session()
    prefix = os.path.join(os.path.dirname(musicnn.__file__), name, "")
    tf.compat.v1.train.Saver().restore(sess, prefix)
    variables = tf.compat.v1.global_variables()
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    in_checkpoint = {n for n in reader.get_variable_to_shape_map() if "Adam" not in n}
    in_checkpoint -= {"beta1_power", "beta2_power"}
    graph_names = {v.op.name for v in variables}
    if graph_names != in_checkpoint:
        sys.exit(f"{name}: graph and checkpoint variables differ: {graph_names ^ in_checkpoint}")
    for var in variables:
        if not np.array_equal(sess.run(var), reader.get_tensor(var.op.name)):
            sys.exit(f"{name}: variable {var.op.name} was not restored")
    return sess, x, is_training, tags, embedding, labels


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=Path, default=Path("streamclf/data/clip.ogg"))
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/musicnn"))
    args = parser.parse_args()

    import librosa
    import tensorflow as tf
    from musicnn import configuration as config
    from musicnn import extractor, models

    n_frames = (
        librosa.time_to_frames(
            INPUT_LENGTH_S, sr=config.SR, n_fft=config.FFT_SIZE, hop_length=config.FFT_HOP
        )
        + 1
    )
    batch, _ = extractor.batch_data(str(args.audio), n_frames, n_frames)
    batch = batch.astype(np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "logmel.npz", batch=batch[:STORED_PATCHES])
    meta = {
        "audio": str(args.audio),
        "audio_sha256": sha256(args.audio),
        "patches": len(batch),
        "stored_patches": STORED_PATCHES,
        "n_frames": int(n_frames),
        "versions": {
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
            "librosa": librosa.__version__,
            "musicnn": "0.1.0",
        },
        "models": {},
    }
    for name in MODELS:
        sess, x, is_training, tags, embedding, labels = restored_session(
            tf, models, config, name, n_frames
        )
        # One patch per run, like musicnn.extractor (config.BATCH_SIZE = 1).
        runs = [
            sess.run([tags, embedding], {x: batch[i : i + 1], is_training: False})
            for i in range(len(batch))
        ]
        sess.close()
        taggram = np.concatenate([r[0] for r in runs]).astype(np.float32)
        features = np.concatenate([r[1] for r in runs]).astype(np.float32)
        own_taggram, _, _ = extractor.extractor(
            str(args.audio), model=name, input_length=INPUT_LENGTH_S
        )
        if not np.array_equal(own_taggram, taggram):
            sys.exit(f"{name}: musicnn.extractor's taggram differs from the verified session's")
        np.savez_compressed(
            args.out / f"{name}.npz", taggram=taggram, embedding=features, labels=np.array(labels)
        )
        top = [labels[i] for i in np.argsort(-taggram.mean(axis=0))[:5]]
        meta["models"][name] = {
            "taggram_shape": list(taggram.shape),
            "embedding_shape": list(features.shape),
            "top5_mean": top,
        }
        print(name, "top 5:", top)
    (args.out / "references.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
