"""Tracks cut from the audio in the daemon: real tracks of datasets/genres joined end to end,
piped into `streamclf serve` as PCM, the track messages read on a real ZeroMQ subscriber."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
from e2e_helpers import (
    CLIP,
    GENRES,
    assert_one_line_error,
    free_tcp_endpoint,
    run_cli,
    streamclf_cmd,
)

from streamclf.backends.runner import load_runner
from streamclf.boundaries import CONTEXT_WINDOWS, MEASURED_UNITS, RADIUS_WINDOWS, WINDOW_HOPS
from streamclf.config import parse_config
from streamclf.errors import ConfigError
from streamclf.features.framer import logmel_windows_for_file
from streamclf.features.mel import WINDOW_FRAMES, frames_for_seconds
from streamclf.feed.schema import GenreMessage, StatusMessage, TrackMessage
from streamclf.feed.subscriber import Subscriber
from streamclf.models.card import load_model_card

RATE_HZ = 16000
CLIPS = ["clips/metal/fof-chaos_god.ogg", "clips/ambient/openclonk-luciddream.ogg",
         "clips/classical/wesnoth-knolls.ogg"]  # test split, three families
DECISION_WINDOWS = WINDOW_HOPS - 1 + CONTEXT_WINDOWS + RADIUS_WINDOWS  # 1 s hop
TOLERANCE_S = 3.0  # as measured in docs/tracks.md

CONFIG = """
[engine]
kind = "onnxruntime"
[framing]
queue_windows = 10000
[feed]
endpoint = "{endpoint}"
status_interval_s = 0.2
[service]
log_format = "json"
[[streams]]
id = "mix"
source = "stdin"
stdin_format = "s16le"
stdin_rate = {rate}
stdin_channels = 1
ring_s = 200.0
audio_boundaries = true
"""


def joined_pcm(paths: list[str], out) -> np.ndarray:
    """The clips butt-joined as 16 kHz mono s16le in `out`; returns the true boundaries (s)."""
    inputs = [arg for p in paths for arg in ("-i", str(GENRES / p))]
    graph = "".join(f"[{i}:a]" for i in range(len(paths))) + f"concat=n={len(paths)}:v=0:a=1"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *inputs,
                    "-filter_complex", graph, "-ac", "1", "-ar", str(RATE_HZ), "-f", "s16le",
                    str(out)], check=True)
    return np.cumsum([sf.info(GENRES / p).duration for p in paths])[:-1]


def serve_stdin(tmp_path):
    """`streamclf serve` reading PCM on stdin, and a subscriber that has joined its feed."""
    endpoint = free_tcp_endpoint()
    config = tmp_path / "tracks.toml"
    config.write_text(CONFIG.format(endpoint=endpoint, rate=RATE_HZ))
    sub = Subscriber(endpoint)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(streamclf_cmd("serve", "--config", str(config)),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while not isinstance(sub.recv(0.5), StatusMessage):  # statuses flow before any audio
        assert proc.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "serve.log").read_text()[-2000:]
    return proc, sub


def receive_until_exit(proc, sub, timeout_s: float = 240.0) -> list:
    messages, deadline = [], time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        if (message := sub.recv(0.2)) is not None:
            messages.append(message)
    while (message := sub.recv(1.0)) is not None:
        messages.append(message)
    return messages


@pytest.fixture(scope="module")
def mix_run(tmp_path_factory):
    """One daemon run over three joined tracks, to the end of its input (EOF)."""
    tmp = tmp_path_factory.mktemp("audio-tracks")
    truth = joined_pcm(CLIPS, tmp / "mix.s16")
    proc, sub = serve_stdin(tmp)
    try:
        proc.stdin.write((tmp / "mix.s16").read_bytes())
        proc.stdin.close()
        messages = receive_until_exit(proc, sub)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        sub.close()
    assert proc.returncode == 0, (tmp / "serve.log").read_text()[-2000:]
    return truth, messages


class TestAudioBoundariesInTheDaemon:
    """A boundary decided late still cuts the tracks where the music changed."""

    def test_each_true_boundary_starts_a_track_from_the_audio(self, mix_run):
        truth, messages = mix_run
        starts = [m for m in messages if isinstance(m, TrackMessage) and m.event == "start"]
        assert [m.source for m in starts] == ["audio"] * len(starts)
        assert starts[0].t == 0.0  # the stream's first track opens with it
        found = np.array([m.t for m in starts[1:]])
        assert len(found) == len(truth)
        assert np.all(np.abs(found - truth) <= TOLERANCE_S), (found, truth)

    def test_the_old_track_keeps_only_its_own_windows(self, mix_run):
        """Each end carries the windows that ended inside it and its true duration, though the
        boundary was decided `DECISION_WINDOWS` windows later."""
        _, messages = mix_run
        tracks = [m for m in messages if isinstance(m, TrackMessage)]
        windows = [m for m in messages if isinstance(m, GenreMessage)]
        assert [m.event for m in tracks] == ["start", "end", "start", "end", "start", "end"]
        assert [m.seq for m in tracks] == list(range(len(tracks)))
        for start, end in zip(tracks[::2], tracks[1::2], strict=True):
            inside = [w for w in windows if start.t < w.t1 <= end.t]
            assert end.windows == len(inside)
            assert end.duration_s == pytest.approx(end.t - start.t)
            # the best family of the track's windows, or "unknown" where the default does not
            # publish that family (the ambient clip: docs/model-selection.md)
            assert end.genre in {w.raw_genre for w in inside} | {"unknown"}
        assert [end.genre for end in tracks[1::2]] == ["metal", "unknown", "classical"]
        assert [m.source for m in tracks[1::2]] == ["audio", "audio", "end"]
        assert [m.t for m in tracks[1:-1:2]] == [m.t for m in tracks[2::2]]
        assert sum(m.windows for m in tracks[1::2]) == len(windows)

    def test_the_boundary_is_decided_late_and_the_smoother_starts_afresh(self, mix_run):
        _, messages = mix_run
        ends = [m.t1 for m in messages if isinstance(m, GenreMessage)]
        for i, message in enumerate(messages):
            if isinstance(message, TrackMessage) and message.event == "start" and message.t > 0:
                before = [m for m in messages[:i] if isinstance(m, GenreMessage)]
                after = next(m for m in messages[i:] if isinstance(m, GenreMessage))
                # the window that ends at the boundary, then DECISION_WINDOWS more, then the cut
                assert len(before) == ends.index(message.t) + 1 + DECISION_WINDOWS
                assert after.genre in (after.raw_genre, "unknown")  # no hysteresis to wait out

    def test_the_last_track_ends_at_the_end_of_the_input(self, mix_run):
        _, messages = mix_run
        last_end = max(i for i, m in enumerate(messages) if isinstance(m, TrackMessage))
        final = next(i for i, m in enumerate(messages) if isinstance(m, StatusMessage) and m.final)
        windows = [m for m in messages if isinstance(m, GenreMessage)]
        assert last_end < final and messages[last_end].t == windows[-1].t1


def test_sigterm_ends_the_open_track(tmp_path):
    """The daemon stopped mid-track: the open track's end comes before the final status."""
    joined_pcm(CLIPS[:1], tmp_path / "one.s16")
    proc, sub = serve_stdin(tmp_path)
    messages: list = []
    try:
        proc.stdin.write((tmp_path / "one.s16").read_bytes()[: 12 * RATE_HZ * 2])
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not any(isinstance(m, GenreMessage) and m.t1 >= 11 for m in messages):
            assert time.monotonic() < deadline
            if (message := sub.recv(0.2)) is not None:
                messages.append(message)
        proc.terminate()
        messages += receive_until_exit(proc, sub, timeout_s=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        sub.close()
    tracks = [m for m in messages if isinstance(m, TrackMessage)]
    assert [(m.event, m.source) for m in tracks] == [("start", "audio"), ("end", "end")]
    windows = [m for m in messages if isinstance(m, GenreMessage)]
    assert tracks[1].t == windows[-1].t1 and tracks[1].windows == len(windows)
    assert isinstance(messages[-1], StatusMessage) and messages[-1].final


class TestAudioBoundariesConfig:
    """`audio_boundaries` is refused with one line where the detector was not measured."""

    def test_off_by_default_and_on_for_any_source(self):
        assert not parse_config("").streams[0].audio_boundaries
        cfg = parse_config('[[streams]]\nsource = "file"\npath = "x.wav"\n'
                           'audio_boundaries = true\n')
        assert cfg.streams[0].audio_boundaries

    @pytest.mark.parametrize(("refused", "accepted", "message"), [
        ('[framing]\nhop_s = 0.5\n', '[framing]\nhop_s = 1.0\n',
         "streams[0].audio_boundaries: needs framing.hop_s = 1.0"),
        ('[[streams]]\nsource = "url"\nurl = "http://radio.example/live"\n',
         '[[streams]]\nsource = "url"\nurl = "http://radio.example/live"\ntrack_titles = false\n',
         "streams[0].audio_boundaries: an http(s) url stream cuts its tracks at its ICY titles"),
    ], ids=["hop", "icy-url"])
    def test_refused_with_one_line(self, refused, accepted, message):
        stream = "" if "[[streams]]" in refused else "[[streams]]\n"
        with pytest.raises(ConfigError) as caught:
            parse_config(f"{refused}{stream}audio_boundaries = true\n")
        assert str(caught.value).startswith(f"<config>: {message}")
        assert "\n" not in str(caught.value)
        accepted_config = parse_config(f"{accepted}{stream}audio_boundaries = true\n")
        assert accepted_config.streams[0].audio_boundaries

    def test_a_model_without_a_measured_detector_stops_the_daemon(self, tmp_path):
        config = tmp_path / "mtt.toml"
        config.write_text('[engine]\nmodel = "MTT_musicnn"\n[[streams]]\nsource = "stdin"\n'
                          'audio_boundaries = true\n')
        line = assert_one_line_error(run_cli("serve", "--config", str(config)), 2)
        assert "no boundary detector measured on model MTT_musicnn's embeddings" in line


def test_the_default_model_carries_the_measured_embedding():
    """fused_musicnn's units 200..399 are MSD_musicnn's embedding, on which the threshold was
    measured: the same numbers, so the measurement holds for the default model too."""
    windows = logmel_windows_for_file(CLIP, window_frames=WINDOW_FRAMES,
                                      hop_frames=frames_for_seconds(1.0))[:8]
    embeddings = {}
    for model in ("MSD_musicnn", "fused_musicnn"):
        runner = load_runner(load_model_card(model), "onnxruntime", incremental=True,
                             hop_frames=frames_for_seconds(1.0), max_batch=8)
        embeddings[model] = runner.run([("clip", w) for w in windows])["embedding"]
        runner.close()
    fused_part = embeddings["fused_musicnn"][:, MEASURED_UNITS["fused_musicnn"]]
    np.testing.assert_array_equal(fused_part, embeddings["MSD_musicnn"])
