"""sd_notify without python-systemd: one datagram per state change to $NOTIFY_SOCKET.

systemd's protocol is tiny (newline-separated ``KEY=VALUE`` pairs in one datagram on an
AF_UNIX socket), so a dependency on libsystemd buys nothing. Whether to talk at all is decided
once, when the `Notifier` is built: without $NOTIFY_SOCKET every call is a no-op function, not
a branch.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import structlog

log = structlog.get_logger(__name__)

Send = Callable[[str], bool]

EXTEND_STEP_S = 10.0  # how often a long start-up asks for more time (3 steps each time)
EXTEND_LIMIT_S = 1800.0  # after this the unit's own TimeoutStartSec= applies again


def _noop(_state: str) -> bool:
    return False


def socket_address(*, notify_socket: str) -> str | None:
    """The AF_UNIX address for a $NOTIFY_SOCKET value; None when it is not a unix socket.

    A leading '@' names an abstract socket (a NUL byte in the kernel's namespace); systemd's
    newer ``vsock:`` addresses are not supported and yield None.
    """
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]
    if notify_socket.startswith("/"):
        return notify_socket
    return None


def watchdog_interval_s(*, env: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd expects pings within, or None when no watchdog applies.

    $WATCHDOG_USEC is the full interval; $WATCHDOG_PID, when set, names the one process it is
    meant for (a child that inherited the environment must not think it is being watched).
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    target = env.get("WATCHDOG_PID", "")
    if target and (not target.isdigit() or int(target) != pid):
        return None
    return int(usec) / 1e6


def _socket_sender(address: str) -> Send:
    """A send function bound to one datagram socket, opened once and kept for the process."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(state: str) -> bool:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:
            # The manager may be gone or busy; a lost notification must never stop the daemon.
            log.warning("sd_notify failed", state=state.split("\n", 1)[0], error=str(exc))
            return False
        return True

    return send


class Notifier:
    """Tells the service manager about readiness, status, reloads and liveness.

    Each method returns True when a datagram was sent. Ping the watchdog every
    `watchdog_ping_period_s` (half the interval systemd enforces, as sd_watchdog_enabled(3)
    recommends) from the loop whose progress it should vouch for.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = socket_address(notify_socket=env.get("NOTIFY_SOCKET", ""))
        if address is None and env.get("NOTIFY_SOCKET"):
            log.warning("unsupported NOTIFY_SOCKET, not notifying",
                        notify_socket=env["NOTIFY_SOCKET"])
        self._send: Send = _noop if address is None else _socket_sender(address)
        self.enabled = address is not None
        self.watchdog_interval_s = watchdog_interval_s(env=env, pid=os.getpid())
        self.watchdog_ping_period_s = (
            None if self.watchdog_interval_s is None else self.watchdog_interval_s / 2
        )

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is finished; `Type=notify` units become active now."""
        if status is None:
            return self._send("READY=1")
        return self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> bool:
        """A one-line status that `systemctl status` shows."""
        return self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Proof of life; systemd restarts the unit when these stop for WatchdogSec."""
        return self._send("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload (SIGHUP) started; send `ready()` when it is done.

        MONOTONIC_USEC lets a manager that supports Type=notify-reload (systemd 253+) tie this
        message to the reload it asked for; older managers ignore it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")

    def stopping(self) -> bool:
        """Shutdown began; systemd stops waiting for readiness and watchdog pings."""
        return self._send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start/stop time, e.g. while a TensorRT plan is built on first start."""
        return self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    @contextlib.contextmanager
    def extended_start(
        self, *, step_s: float = EXTEND_STEP_S, limit_s: float = EXTEND_LIMIT_S
    ) -> Iterator[None]:
        """Keep asking for more start time while the block runs, every `step_s`.

        Start-up has steps of no known length (the first model load, warm-up, a TensorRT plan
        build: minutes on a first start), each request covers the next three steps, and a
        start that is still busy after `limit_s` is left to the unit's TimeoutStartSec=.
        """
        if not self.enabled:
            yield
            return
        done = threading.Event()

        def keep_asking() -> None:
            deadline = time.monotonic() + limit_s
            while not done.wait(step_s) and time.monotonic() < deadline:
                self.extend_timeout(3 * step_s)

        self.extend_timeout(3 * step_s)
        asker = threading.Thread(target=keep_asking, name="sd-extend-start", daemon=True)
        asker.start()
        try:
            yield
        finally:
            done.set()
            asker.join()


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE pair and could smuggle READY=1 into a status.
    return " ".join(text.splitlines())
