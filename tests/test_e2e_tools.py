"""The small commands end to end: devices, engine info/build, model import, --help, --version."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from audio_helpers import pulse_server_fixture
from e2e_helpers import assert_one_line_error, run_cli
from models_helpers import musicnn_wheel

from streamclf import __version__

pulse = pulse_server_fixture()

COMMANDS = ["listen", "serve", "classify", "subscribe", "devices", "engine", "model", "bench"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    proc = run_cli(*([command] if command else []), "--help", timeout=30)
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert out.startswith("usage: streamclf") and "--help" in out


def test_version():
    proc = run_cli("--version", timeout=30)
    assert proc.stdout.decode().strip() == f"streamclf {__version__}"


def test_no_command_is_a_usage_error():
    proc = run_cli(timeout=30)
    assert proc.returncode == 2 and "usage:" in proc.stderr.decode()


class TestDevices:
    """`streamclf devices` lists what PortAudio sees: here, the PulseAudio null sink's monitor."""

    def test_lists_pulse_inputs(self, pulse):
        proc = run_cli("devices", "--json", timeout=30, env=pulse.env)
        assert proc.returncode == 0, proc.stderr.decode()
        devices = json.loads(proc.stdout)
        names = [d["name"] for d in devices]
        assert "pulse" in names, names
        assert sum(d["is_default"] for d in devices) <= 1
        text = run_cli("devices", timeout=30, env=pulse.env).stdout.decode()
        assert "pulse" in text


class TestEngineCommands:
    """Plans are listed from the cache; building one without TensorRT is a clear engine error."""

    def test_info_on_an_empty_cache(self, tmp_path):
        proc = run_cli("engine", "info", "--cache-dir", str(tmp_path), timeout=30)
        assert proc.returncode == 0
        assert proc.stdout.decode().startswith(f"0 plan(s) in {tmp_path}")

    def test_build_without_tensorrt(self, tmp_path):
        pytest.importorskip("onnxruntime")
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            assert_one_line_error(run_cli("engine", "build", "--cache-dir", str(tmp_path)), 5)
        else:
            pytest.skip("tensorrt is installed: tests/test_backends_tensorrt.py covers build")


def test_model_import(tmp_path):
    """The original checkpoint in the musicnn wheel → ONNX + card, as the committed engines."""
    pytest.importorskip("torch")
    proc = run_cli("model", "import", str(musicnn_wheel()), "--out", str(tmp_path),
                   "--name", "MSD_vgg", timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split() == [str(tmp_path / "MSD_vgg.json")]
    card = json.loads((tmp_path / "MSD_vgg.json").read_text())
    assert len(card["labels"]) == 50 and (tmp_path / "MSD_vgg.onnx").stat().st_size > 1e6


def test_model_import_bad_source(tmp_path):
    pytest.importorskip("torch")
    bad = tmp_path / "musicnn-0.1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    assert_one_line_error(run_cli("model", "import", str(bad), "--out", str(tmp_path / "o")), 4)


def test_daemon_side_modules_never_import_torch():
    """Only the model port (`models.musicnn`), `streamclf.train` (training, export, the fused and
    split builders) and the torch engine use torch; everything `serve`, `listen`, `classify`,
    `evaluate` and `bench` load must not."""
    modules = ["streamclf.cli", "streamclf.service", "streamclf.pipeline", "streamclf.classify",
               "streamclf.evaluate", "streamclf.monitor", "streamclf.bench.report",
               "streamclf.backends.runner", "streamclf.models.card",
               "streamclf.models.taxonomy"]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()
