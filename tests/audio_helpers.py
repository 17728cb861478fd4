"""Real capture without a sound card: a private PulseAudio server with a null sink.

Usage from any test module (the server is per test session directory, stopped by its own pid):

    from audio_helpers import CLIP_PATH, pulse_server_fixture
    pulse = pulse_server_fixture()          # a module-scoped fixture named ``pulse``

``PulseServer.play(path)`` plays a file into the sink; PortAudio's ALSA device ``pulse`` then
captures the sink's monitor (the server's default source). ``PULSE_SERVER`` is set for the
test process while the fixture is active, so sounddevice/libpulse find this server only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from streamclf.testing.daemon import wait_for  # noqa: F401 — the tests import it from here

CLIP_PATH = Path(__file__).resolve().parents[1] / "streamclf" / "data" / "clip.ogg"
SINK_NAME = "cap"


class PulseServer:
    """One ``pulseaudio`` daemon in its own XDG_RUNTIME_DIR with a null sink ``cap``."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = Path(runtime_dir)
        self.socket = self.runtime_dir / "pulse" / "native"
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PULSE_SERVER": f"unix:{self.socket}",
        }
        self.pid: int | None = None
        self._players: list[subprocess.Popen] = []

    def start(self) -> None:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.chmod(0o700)
        subprocess.run(
            ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "--disallow-exit", "-n",
             "--load=module-native-protocol-unix",
             f"--load=module-null-sink sink_name={SINK_NAME}"],
            env=self.env, check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        pid_file = self.runtime_dir / "pulse" / "pid"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if pid_file.exists() and self.pactl("info", check=False).returncode == 0:
                self.pid = int(pid_file.read_text().split()[0])
                return
            time.sleep(0.05)
        msg = "pulseaudio did not come up"
        raise RuntimeError(msg)

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10, check=check
        )

    def null_sink_modules(self) -> list[str]:
        lines = self.pactl("list", "short", "modules").stdout.splitlines()
        return [line.split()[0] for line in lines if "module-null-sink" in line]

    def unload_sink(self) -> None:
        for module in self.null_sink_modules():
            self.pactl("unload-module", module)

    def load_sink(self) -> None:
        self.pactl("load-module", "module-null-sink", f"sink_name={SINK_NAME}")
        self.pactl("set-default-source", f"{SINK_NAME}.monitor", check=False)

    def play(self, path: Path = CLIP_PATH) -> subprocess.Popen:
        player = subprocess.Popen(
            ["paplay", f"--device={SINK_NAME}", str(path)], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._players.append(player)
        return player

    def stop(self) -> None:
        for player in self._players:
            if player.poll() is None:
                player.terminate()
                player.wait(5)
        if self.pid is None:
            return
        subprocess.run(
            ["pulseaudio", "--kill"], env=self.env, capture_output=True, timeout=10, check=False
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(self.pid):
            time.sleep(0.05)
        if _alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        self.pid = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def require_pulseaudio() -> None:
    """Skip (with the reason) where the PulseAudio tools are not installed."""
    missing = [tool for tool in ("pulseaudio", "pactl", "paplay") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"PulseAudio not installed ({', '.join(missing)} missing)")


def pulse_server_fixture(scope: str = "module"):
    """A pytest fixture (assign it to a module-level name) yielding a running PulseServer."""

    @pytest.fixture(scope=scope)
    def pulse(tmp_path_factory):
        require_pulseaudio()
        server = PulseServer(tmp_path_factory.mktemp("xdg-runtime"))
        server.start()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PULSE_SERVER", server.env["PULSE_SERVER"])
            mp.setenv("XDG_RUNTIME_DIR", server.env["XDG_RUNTIME_DIR"])
            try:
                yield server
            finally:
                server.stop()

    return pulse


def best_alignment(segment: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """Lag of ``segment`` inside ``reference`` by FFT cross-correlation, and the normalised
    correlation there: 1-D float arrays, ``len(reference) >= len(segment)``."""
    n = len(reference) + len(segment)
    size = 1 << (n - 1).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(segment, size)), size)
    lag = int(np.argmax(xcorr[: len(reference) - len(segment) + 1]))
    ref = reference[lag : lag + len(segment)]
    denom = np.linalg.norm(ref) * np.linalg.norm(segment)
    return lag, float(ref @ segment / denom) if denom > 0 else 0.0
