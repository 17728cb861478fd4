"""`streamclf classify`: real files in every format through the real framer and ONNX Runtime."""

from __future__ import annotations

import json
import struct
import subprocess

import pytest
from e2e_helpers import CLIP, assert_one_line_error, run_cli

CLIP_WINDOWS_HOP_3 = 10  # 30 s → 1876 frames → 10 non-overlapping 187-frame patches
CLIP_WINDOWS_HOP_1 = 1 + (1876 - 187) // 62


def _classify_json(*args: str) -> dict:
    proc = run_cli("classify", "--json", *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


class TestClassify:
    """Per-window tags and a track summary, the same whatever the container."""

    def test_bundled_clip_json(self):
        doc = _classify_json(str(CLIP))
        assert doc["v"] == 1 and doc["model"] and doc["engine"] == "onnxruntime"
        (entry,) = doc["files"]
        windows = entry["windows"]
        assert len(windows) == CLIP_WINDOWS_HOP_3
        assert windows[0]["start"] == 0.0 and windows[1]["start"] == pytest.approx(2.992)
        for w in windows:
            assert len(w["top"]) == 5
            probs = [p for _, p in w["top"]]
            assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        # The clip is a rock track (hedgewars "Rock.ogg"); every stock model agrees.
        assert entry["summary"]["genre"] == "rock"
        assert entry["summary"]["confident"] is True  # a validated genre, over its threshold
        assert entry["summary"]["windows"] == CLIP_WINDOWS_HOP_3

    def test_daemon_hop_gives_overlapping_windows(self):
        doc = _classify_json("--hop", "1", "--top-k", "3", str(CLIP))
        windows = doc["files"][0]["windows"]
        assert len(windows) == CLIP_WINDOWS_HOP_1
        assert windows[1]["start"] == pytest.approx(62 * 256 / 16000)
        assert all(len(w["top"]) == 3 for w in windows)

    @pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3"])
    def test_other_formats(self, tmp_path, suffix):
        converted = tmp_path / f"clip{suffix}"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(CLIP), str(converted)],
                       check=True, timeout=60)
        doc = _classify_json(str(converted), "--model", "MTT_musicnn")
        entry = doc["files"][0]
        assert doc["model"] == "MTT_musicnn"
        # MP3 adds encoder delay and padding: at most one more patch.
        most = CLIP_WINDOWS_HOP_3 + (suffix == ".mp3")
        assert CLIP_WINDOWS_HOP_3 <= len(entry["windows"]) <= most
        assert entry["summary"]["top"][0][0] == "rock"

    def test_several_files_and_plot(self, tmp_path):
        wav = tmp_path / "b.wav"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(CLIP), "-t", "10", str(wav)],
                       check=True, timeout=60)
        plot = tmp_path / "taggram.png"
        proc = run_cli("classify", str(CLIP), str(wav), "--plot", str(plot))
        assert proc.returncode == 0, proc.stderr.decode()
        out = proc.stdout.decode()
        assert str(CLIP) in out and str(wav) in out and "track (3 windows)" in out
        for stem in ("clip", "b"):
            png = tmp_path / f"taggram-{stem}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert png.stat().st_size > 10_000
            assert f"taggram written to {png}" in proc.stderr.decode()  # says where it went
            width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the IHDR chunk
            assert width > height  # time runs along a wide x axis


class TestClassifyFolder:
    """A folder's audio files go through one loaded engine; an unreadable one is one error line,
    the rest are still tagged, and the exit code says some failed."""

    def test_folder_with_an_unreadable_file(self, tmp_path):
        (tmp_path / "sub").mkdir()
        wav = tmp_path / "sub" / "b.wav"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(CLIP), "-t", "10", str(wav)],
                       check=True, timeout=60)
        (tmp_path / "a.ogg").write_bytes(CLIP.read_bytes())
        (tmp_path / "bad.flac").write_bytes(b"fLaC" + bytes(range(256)) * 20)
        (tmp_path / "notes.txt").write_text("not audio")
        proc = run_cli("classify", "--json", str(tmp_path))
        assert "bad.flac" in assert_one_line_error(proc, 3)
        assert "1 of 3 files could not be tagged" in proc.stderr.decode()
        doc = json.loads(proc.stdout)
        assert [f["file"] for f in doc["files"]] == [str(tmp_path / "a.ogg"), str(wav)]
        assert [f["summary"]["windows"] for f in doc["files"]] == [CLIP_WINDOWS_HOP_3, 3]

    def test_folder_without_audio(self, tmp_path):
        (tmp_path / "notes.txt").write_text("not audio")
        line = assert_one_line_error(run_cli("classify", str(tmp_path)), 3)
        assert "no audio files" in line


class TestClassifyBadInput:
    """Bad input is one line and a documented exit code, never a traceback."""

    def test_corrupt_file(self, tmp_path):
        bad = tmp_path / "bad.flac"
        bad.write_bytes(b"fLaC" + bytes(range(256)) * 20)
        line = assert_one_line_error(run_cli("classify", str(bad)), 3)
        assert "bad.flac" in line

    def test_missing_file(self, tmp_path):
        assert_one_line_error(run_cli("classify", str(tmp_path / "nope.ogg")), 3)

    def test_too_short(self, tmp_path):
        short = tmp_path / "short.wav"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(CLIP), "-t", "1.5", str(short)],
                       check=True, timeout=60)
        line = assert_one_line_error(run_cli("classify", str(short)), 3)
        assert "shorter than one window" in line

    def test_unknown_model(self):
        assert_one_line_error(run_cli("classify", str(CLIP), "--model", "no_such_model"), 4)

    def test_bad_window(self):
        line = assert_one_line_error(run_cli("classify", str(CLIP), "--window", "5"), 2)
        assert "--window" in line


class TestGenreVocabulary:
    """The genre is picked from a chosen subset of the model's tags; a tag it lacks is refused."""

    def test_chosen_genres(self):
        doc = _classify_json(str(CLIP), "--model", "MSD_musicnn", "--genres", "jazz,metal,pop")
        entry = doc["files"][0]
        assert {w["genre"] for w in entry["windows"]} <= {"jazz", "metal", "pop"}
        assert entry["summary"]["genre"] in {"jazz", "metal", "pop"}
        assert entry["summary"]["top"][0][0] == "rock"  # every tag stays available

    def test_confident_only_for_a_published_genre_over_its_threshold(self):
        """The default publishes rock at >= 0.35 and never jazz (its card)."""
        from streamclf.classify import is_confident
        from streamclf.models.card import load_model_card

        card = load_model_card()
        threshold = card.genre_thresholds["rock"]
        assert is_confident("rock", threshold, card, card.genres)
        assert not is_confident("rock", threshold - 0.01, card, card.genres)
        assert "jazz" not in card.genres and not is_confident("jazz", 0.99, card, card.genres)

    def test_unknown_genre(self):
        proc = run_cli("classify", str(CLIP), "--model", "MSD_musicnn", "--genres", "classical")
        assert "--genres: MSD_musicnn has no tag 'classical'" in assert_one_line_error(proc, 2)
