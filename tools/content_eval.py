#!/usr/bin/env python3
"""Content detection (streamclf/content.py) measured on real recordings: docs/content.md.

Sets, all real recordings shipped in the repository:
- speech: datasets/speech (Flight of the Amazon Queen's recorded voice-over), 8 clips;
- music: datasets/genres, 72 clips of 8 families, singing tracks among them;
- music+speech: each speech clip over a music clip (every 9th of the genre set, so each family
  comes in), the speech RMS +6, 0, -6 and -12 dB against the music's;
- switching: music → speech → music, 30 s each, through the held content's smoother.

Every window goes through the daemon's own code: VoiceActivity (Silero VAD) on the 16 kHz audio,
the LogMelFramer and the onnxruntime engine for the music evidence, `content_probabilities`,
and `ContentSmoother` for the held content. Prints per-class precision and recall of the
window's own label (`raw_content`) and of the held one, the false alarms that matter (music
windows called speech), and the switching delays; `--json` writes them all.

    .venv/bin/python tools/content_eval.py [--hop 1.0] [--json out.json] [--cache DIR]
    .venv/bin/python tools/content_eval.py --cost   # CPU of the stage per stream, and stop
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from streamclf.backends.runner import load_runner
from streamclf.config import ContentConfig
from streamclf.content import (
    LABELS,
    MUSIC,
    MUSIC_SPEECH,
    SPEECH,
    ContentSmoother,
    MusicEvidence,
    SileroVad,
    VoiceActivity,
    content_probabilities,
    speech_share,
)
from streamclf.features.framer import LogMelFramer, load_mono_16k
from streamclf.features.mel import SAMPLE_RATE_HZ, WINDOW_FRAMES, frames_for_seconds
from streamclf.models.card import load_model_card

ROOT = Path(__file__).resolve().parent.parent
SPEECH_SET = ROOT / "datasets" / "speech"
MUSIC_SET = ROOT / "datasets" / "genres"
MIX_DB = (6, 0, -6, -12)
MIX_MUSIC_STRIDE = 9
SILENCE_DBFS = -55.0  # the genre's own silence gate (smoothing.silence_dbfs)
SEGMENT_S = 30.0


class Features:
    """Per-window evidence of one recording, through the daemon's stages."""

    def __init__(self, hop_s: float, cache: Path | None) -> None:
        self.cache = cache
        self.card = load_model_card("fused_musicnn")
        self.hop_frames = frames_for_seconds(hop_s)
        self.runner = load_runner(self.card, "onnxruntime", hop_frames=self.hop_frames,
                                  max_batch=16, threads=1)
        self.vad = SileroVad()
        self.music = MusicEvidence(self.card.name)

    def __call__(self, audio: np.ndarray, key: str) -> np.ndarray:
        """[n_windows, 5]: t0, t1, speech share, music evidence, level dBFS; kept in the cache
        folder under `key` (the decision can then be tuned without running the models again)."""
        name = f"{key.replace('/', '_').replace(' ', '_')}.npy"
        cached = self.cache / name if self.cache else None
        if cached is not None and cached.exists():
            return np.load(cached)
        features = self._compute(audio)
        if cached is not None:
            np.save(cached, features)
        print(f"{key}: {len(features)} windows", flush=True)
        return features

    def _compute(self, audio: np.ndarray) -> np.ndarray:
        voice = VoiceActivity(self.vad, history_s=audio.size / SAMPLE_RATE_HZ + 1.0)  # all of it
        voice.push(audio)
        framer = LogMelFramer(WINDOW_FRAMES, self.hop_frames)
        windows = [*framer.push(audio), *framer.flush()]
        out = self.runner.run([("eval", w) for w in windows])
        self.runner.reset("eval")
        return np.array([(w.t_start_s, w.t_end_s,
                          speech_share(voice.chunk_probabilities(w.t_start_s, w.t_end_s)),
                          self.music(emb), w.level_dbfs)
                         for w, emb in zip(windows, out["embedding"], strict=True)])


def window_probs(features: np.ndarray) -> np.ndarray:
    return np.array([content_probabilities(speech=s, music=m, silent=not lv >= SILENCE_DBFS)
                     for _, _, s, m, lv in features])


def held_labels(features: np.ndarray, config: ContentConfig) -> list[str]:
    smoother = ContentSmoother(config)
    return [smoother.update(p, f[1]).content for p, f in zip(window_probs(features), features,
                                                             strict=True)]


def rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-20)


def mix(speech: np.ndarray, music: np.ndarray, speech_db: float) -> np.ndarray:
    """Speech over music, the speech's RMS `speech_db` above the music's; the sum kept under
    full scale."""
    n = min(speech.size, music.size)
    gain = 10 ** ((speech_db - rms_db(speech[:n]) + rms_db(music[:n])) / 20)
    out = music[:n] + gain * speech[:n]
    return out / max(1.0, float(np.abs(out).max()) / 0.99)


def scores(truth: list[str], got: list[str]) -> dict[str, dict[str, float]]:
    """Per class: precision, recall, windows."""
    t, g = np.array(truth), np.array(got)
    out = {}
    for label in LABELS:
        hits = int(np.sum((t == label) & (g == label)))
        called, real = int(np.sum(g == label)), int(np.sum(t == label))
        out[label] = {"precision": hits / called if called else float("nan"),
                      "recall": hits / real if real else float("nan"), "windows": real}
    return out


def switch_delay(features: np.ndarray, held: list[str], *, boundary_s: float,
                 target: str) -> float:
    """Seconds from `boundary_s` to the first window end from which `target` is held."""
    for (_, t1, *_), label in zip(features, held, strict=True):
        if t1 > boundary_s and label == target:
            return float(t1 - boundary_s)
    return float("nan")


def cpu_cost() -> None:
    """CPU seconds of the content stage per second of one stream: the VAD as the stream worker
    runs it (50 ms blocks), the per-window decision as the engine worker does (hop 1 s)."""
    speech = load_mono_16k(SPEECH_SET / "clips" / "fotaq-00.ogg")
    music_clip = load_mono_16k(MUSIC_SET / "clips" / "classical" / "wesnoth-battle.ogg")
    audio = np.concatenate([speech, music_clip])
    voice, music = VoiceActivity(SileroVad()), MusicEvidence("fused_musicnn")
    smoother = ContentSmoother(ContentConfig())
    embedding = np.random.default_rng(0).normal(size=400).astype(np.float32)
    block, seconds = SAMPLE_RATE_HZ // 20, audio.size / SAMPLE_RATE_HZ
    started = time.process_time()
    for at in range(0, audio.size, block):
        voice.push(audio[at : at + block])
    vad_s = time.process_time() - started
    ends = np.arange(3.0, seconds, 1.0)
    started = time.process_time()
    for t1 in ends:
        share = speech_share(voice.chunk_probabilities(t1 - 3.0, t1))
        smoother.update(content_probabilities(speech=share, music=music(embedding), silent=False),
                        t1)
    window_s = time.process_time() - started
    print(f"{seconds:.1f} s of audio: VAD {vad_s:.3f} CPU s ({100 * vad_s / seconds:.2f} % of a "
          f"core); decision {1000 * window_s / ends.size:.3f} ms CPU a window")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hop", type=float, default=1.0, help="hop between windows, s")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--cache", type=Path, help="keep each recording's window evidence here")
    parser.add_argument("--cost", action="store_true", help="measure the CPU cost only")
    args = parser.parse_args()
    if args.cost:
        cpu_cost()
        return
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    features = Features(args.hop, args.cache)
    config = ContentConfig()
    speech = [load_mono_16k(SPEECH_SET / r["path"]) for r in _rows(SPEECH_SET)]
    music_rows = _rows(MUSIC_SET)
    music = [load_mono_16k(MUSIC_SET / r["path"]) for r in music_rows]
    sets: dict[str, list[tuple[str, np.ndarray]]] = {
        SPEECH: [(r["path"], features(a, r["path"]))
                 for r, a in zip(_rows(SPEECH_SET), speech, strict=True)],
        MUSIC: [(r["path"], features(a, r["path"]))
                for r, a in zip(music_rows, music, strict=True)],
        MUSIC_SPEECH: [],
    }
    beds = list(range(0, len(music), MIX_MUSIC_STRIDE))
    for i, voice in enumerate(speech):
        for db in MIX_DB:
            bed = beds[i % len(beds)]
            name = f"{i}@{db:+d}dB over {music_rows[bed]['path']}"
            sets[MUSIC_SPEECH].append((name, features(mix(voice, music[bed], db), name)))
    truth, raw, held = [], [], []
    per_file = {}
    by_level: dict[str, list[str]] = {f"{db:+d}": [] for db in MIX_DB}
    for label, items in sets.items():
        for name, f in items:
            got_raw = [LABELS[int(np.argmax(p))] for p in window_probs(f)]
            got_held = held_labels(f, config)
            truth += [label] * len(f)
            raw += got_raw
            held += got_held
            if label == MUSIC_SPEECH:
                by_level[name.split("@")[1].split("dB")[0]] += got_held
            per_file[name] = {"truth": label, "speech_share": f[:, 2].round(3).tolist(),
                              "music": f[:, 3].round(3).tolist(), "raw": got_raw}
    music_windows = [i for i, t in enumerate(truth) if t == MUSIC]
    report = {
        "hop_s": args.hop, "config": vars(config) if hasattr(config, "__dict__") else str(config),
        "raw": scores(truth, raw), "held": scores(truth, held),
        "music_called_speech_raw": float(np.mean([raw[i] == SPEECH for i in music_windows])),
        "music_called_speech_held": float(np.mean([held[i] == SPEECH for i in music_windows])),
        "mix_held_by_level": {db: {label: float(np.mean([g == label for g in got]))
                                   for label in LABELS} for db, got in by_level.items()},
    }
    delays = {"music_to_speech": [], "speech_to_music": []}
    seg = int(SEGMENT_S * SAMPLE_RATE_HZ)
    for i, voice in enumerate(speech):
        bed = music[beds[i % len(beds)]]
        after = (i * 7 + 3) % len(music)
        f = features(np.concatenate([bed[:seg], voice[:seg], music[after][:seg]]),
                     f"switch {i} {after}")
        h = held_labels(f, config)
        delays["music_to_speech"].append(switch_delay(f, h, boundary_s=SEGMENT_S, target=SPEECH))
        delays["speech_to_music"].append(switch_delay(f, h, boundary_s=2 * SEGMENT_S,
                                                      target=MUSIC))
    report["switch_delay_s"] = delays
    _print(report)
    if args.json:
        report["per_file"] = per_file
        args.json.write_text(json.dumps(report, indent=1))


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open() as f:
        return list(csv.DictReader(f))


def _print(report: dict) -> None:
    print(f"hop {report['hop_s']} s; {report['config']}")
    print("| class | windows | precision (window) | recall (window) | precision (held) "
          "| recall (held) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label in LABELS:
        r, h = report["raw"][label], report["held"][label]
        print(f"| {label} | {r['windows']} | {r['precision']:.3f} | {r['recall']:.3f} "
              f"| {h['precision']:.3f} | {h['recall']:.3f} |")
    print("| speech vs music (dB) | held music | held speech | held music+speech |")
    print("| --- | --- | --- | --- |")
    for db, shares in report["mix_held_by_level"].items():
        print(f"| {db} | {shares[MUSIC]:.3f} | {shares[SPEECH]:.3f} | {shares[MUSIC_SPEECH]:.3f} |")
    print(f"music windows called speech: window {report['music_called_speech_raw']:.3f}, "
          f"held {report['music_called_speech_held']:.3f}")
    for key, values in report["switch_delay_s"].items():
        v = np.array(values)
        print(f"switch {key}: median {np.nanmedian(v):.1f} s, max {np.nanmax(v):.1f} s, "
              f"never {int(np.isnan(v).sum())} of {v.size}")


if __name__ == "__main__":
    main()
