"""sd_notify over a real AF_UNIX datagram socket, the way systemd's manager receives it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from streamclf.sdnotify import Notifier, socket_address, watchdog_interval_s


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    address = str(tmp_path / "notify")
    sock = _receiver(address)
    yield sock, address
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"streamclf-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    yield sock, "@" + name
    sock.close()


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


class TestNotifierOverPathSocket:
    """Every state change is one datagram of KEY=VALUE lines on $NOTIFY_SOCKET."""

    def test_ready_status_watchdog_stopping(self, path_socket):
        sock, address = path_socket
        notifier = Notifier({"NOTIFY_SOCKET": address})
        assert notifier.enabled
        assert notifier.ready("listening on tcp://127.0.0.1:5555")
        assert _recv(sock) == "READY=1\nSTATUS=listening on tcp://127.0.0.1:5555"
        assert notifier.status("2 streams")
        assert _recv(sock) == "STATUS=2 streams"
        assert notifier.watchdog()
        assert _recv(sock) == "WATCHDOG=1"
        assert notifier.stopping()
        assert _recv(sock) == "STOPPING=1"

    def test_reloading_carries_monotonic_time(self, path_socket):
        sock, address = path_socket
        before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        Notifier({"NOTIFY_SOCKET": address}).reloading()
        fields = dict(line.split("=", 1) for line in _recv(sock).splitlines())
        assert fields["RELOADING"] == "1"
        assert before_usec <= int(fields["MONOTONIC_USEC"]) <= before_usec + 60_000_000

    def test_extend_timeout_in_microseconds(self, path_socket):
        sock, address = path_socket
        Notifier({"NOTIFY_SOCKET": address}).extend_timeout(90.5)
        assert _recv(sock) == "EXTEND_TIMEOUT_USEC=90500000"

    def test_status_cannot_smuggle_a_second_field(self, path_socket):
        sock, address = path_socket
        Notifier({"NOTIFY_SOCKET": address}).status("fine\nREADY=1")
        assert _recv(sock) == "STATUS=fine READY=1"

    def test_vanished_manager_is_logged_not_raised(self, tmp_path):
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
        with capture_logs() as logs:
            assert notifier.watchdog() is False
        assert logs[0]["event"] == "sd_notify failed"
        assert logs[0]["state"] == "WATCHDOG=1"


class TestNotifierOverAbstractSocket:
    """'@name' in $NOTIFY_SOCKET addresses the abstract namespace."""

    def test_ready(self, abstract_socket):
        sock, address = abstract_socket
        assert Notifier({"NOTIFY_SOCKET": address}).ready()
        assert _recv(sock) == "READY=1"


class TestNotifierDisabled:
    """Without a socket the notifier is a silent no-op."""

    def test_no_socket(self):
        notifier = Notifier({})
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.watchdog_ping_period_s is None

    def test_unsupported_address_warns_once_and_stays_silent(self):
        with capture_logs() as logs:
            notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
        assert not notifier.enabled
        assert notifier.ready() is False
        assert [entry["event"] for entry in logs] == ["unsupported NOTIFY_SOCKET, not notifying"]

    def test_reads_process_environment_by_default(self, monkeypatch, path_socket):
        sock, address = path_socket
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert Notifier().ready()
        assert _recv(sock) == "READY=1"


class TestWatchdogInterval:
    """WATCHDOG_USEC is the enforced interval; pings go out at half of it."""

    def test_interval_and_ping_period(self):
        env = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
        notifier = Notifier(env)
        assert notifier.watchdog_interval_s == 10.0
        assert notifier.watchdog_ping_period_s == 5.0

    def test_without_pid_applies_to_us(self):
        assert watchdog_interval_s(env={"WATCHDOG_USEC": "3000000"}, pid=42) == 3.0

    @pytest.mark.parametrize(
        "env",
        [
            {},
            {"WATCHDOG_USEC": "0"},
            {"WATCHDOG_USEC": "soon"},
            {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "41"},
            {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "x"},
        ],
    )
    def test_no_watchdog(self, env):
        assert watchdog_interval_s(env=env, pid=42) is None


class TestSocketAddress:
    """$NOTIFY_SOCKET values map to AF_UNIX addresses."""

    @pytest.mark.parametrize(
        ("value", "address"),
        [("/run/systemd/notify", "/run/systemd/notify"), ("@abc", "\0abc"), ("", None),
         ("x", None)],
    )
    def test_mapping(self, value, address):
        assert socket_address(notify_socket=value) == address
