"""The shipped systemd units load cleanly in systemd's own parser and stay hardened.

There is no systemd as PID 1 here, so the units are checked offline: `systemd-analyze verify`
loads them into a test manager (it insists the ExecStart binary exists, so each test verifies
a copy whose binary is a stub at a temporary path), and `systemd-analyze security --offline`
scores the sandbox.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parents[1] / "systemd"
SYSTEM_UNIT = UNITS_DIR / "streamclf.service"
USER_UNIT = UNITS_DIR / "streamclf-user.service"
INSTALLED_BINARY = "/opt/streamclf/venv/bin/streamclf"
MAX_EXPOSURE = 2.5

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def directives(unit: Path) -> dict[str, list[str]]:
    """`Section.Key` -> every value it is given (systemd keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            found.setdefault(f"{section}.{key}", []).append(value)
    return found


def analyze(*args: str, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    # --user needs a runtime directory even offline.
    env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime_dir), "SYSTEMD_PAGER": ""}
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, env=env, timeout=120,
        check=False,
    )


def verifiable_copy(unit: Path, tmp_path: Path, extra: str = "") -> Path:
    """The unit with its ExecStart binary swapped for an executable stub that exists."""
    stub = tmp_path / "bin" / "streamclf"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = unit.read_text()
    assert INSTALLED_BINARY in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace(INSTALLED_BINARY, str(stub)) + extra)
    return copy


def verify_complaints(unit: Path, tmp_path: Path, *flags: str) -> list[str]:
    result = analyze("verify", "--man=no", *flags, str(unit), runtime_dir=tmp_path)
    lines = (result.stdout + result.stderr).splitlines()
    complaints = [line for line in lines if unit.name in line or unit.stem in line]
    if result.returncode != 0:
        complaints.append(f"exit status {result.returncode}")
    return complaints


@pytest.mark.parametrize(("unit", "flags"), [(SYSTEM_UNIT, ()), (USER_UNIT, ("--user",))])
class TestVerify:
    """systemd's own parser accepts every line of the units."""

    def test_no_complaints(self, unit, flags, tmp_path):
        assert verify_complaints(verifiable_copy(unit, tmp_path), tmp_path, *flags) == []

    def test_an_unknown_key_is_caught(self, unit, flags, tmp_path):
        broken = verifiable_copy(unit, tmp_path, extra="[Service]\nRestartSteps=5\n")
        assert any("RestartSteps" in line for line in verify_complaints(broken, tmp_path, *flags))


class TestSystemUnitSecurity:
    """The system unit's sandbox scores at most 2.5 and still reaches the sound card."""

    def test_exposure(self, tmp_path):
        result = analyze("security", "--offline=true", str(SYSTEM_UNIT), runtime_dir=tmp_path)
        match = re.search(r"Overall exposure level for streamclf\.service: ([0-9.]+)",
                          result.stdout)
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) <= MAX_EXPOSURE

    def test_sound_card_stays_reachable(self):
        found = directives(SYSTEM_UNIT)
        assert found["Service.DeviceAllow"] == ["char-alsa rw"]
        assert found["Service.SupplementaryGroups"] == ["audio"]
        assert "Service.PrivateDevices" not in found
        assert "Service.PrivateUsers" not in found  # would unmap the audio group
        assert "Service.MemoryDenyWriteExecute" not in found  # cffi capture callbacks need W+X


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT])
class TestServiceContract:
    """What the daemon relies on: notify readiness, watchdog, SIGHUP reload, a state directory."""

    def test_contract(self, unit):
        found = directives(unit)
        assert found["Service.Type"] == ["notify"]
        assert found["Service.NotifyAccess"] == ["main"]
        assert float(found["Service.WatchdogSec"][0]) > 0
        assert found["Service.ExecReload"] == ["kill -HUP $MAINPID"]
        assert found["Service.Restart"] == ["on-failure"]
        assert found["Service.StateDirectory"] == ["streamclf"]
        assert found["Service.ExecStart"][0].startswith(f"{INSTALLED_BINARY} serve --config ")
