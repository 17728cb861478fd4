"""The daemon's side of the feed: one PUB socket, owned by the engine worker, that never blocks.

ZeroMQ's PUB drops messages for a subscriber whose queue (SNDHWM) is full, per subscriber, so one
stuck client never holds up the daemon or the other clients; those losses are invisible here and
show up at the subscriber as seq gaps (`Subscriber.lost`). `drops` counts the messages the socket
itself refused (zmq.Again). Sequence numbers are assigned here, gap-free per (kind, stream).
"""

from __future__ import annotations

import errno
import ipaddress
from pathlib import Path
from typing import Self

import structlog
import zmq
import zmq.auth

from streamclf.config import FeedConfig
from streamclf.errors import FeedError
from streamclf.feed.schema import Message

log = structlog.get_logger(__name__)

CLOSE_LINGER_MS = 200  # at close, give queued messages (the final status) this long to leave
LOOPBACK_NAMES = {"localhost", "lo", "ip6-localhost"}


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ipc:// and for tcp:// bound to a loopback address or interface only."""
    if endpoint.startswith("ipc://"):
        return True
    host = endpoint.removeprefix("tcp://").rpartition(":")[0].strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a DNS name: may face the network
        return False


class Publisher:
    """Binds the PUB socket; `publish(message)` sends a stamped message without blocking."""

    def __init__(self, config: FeedConfig) -> None:
        self.endpoint = config.endpoint
        if not (config.curve.enabled or config.allow_insecure_remote
                or is_loopback_endpoint(config.endpoint)):
            msg = (f"refusing to publish unencrypted on {config.endpoint}: enable [feed.curve] "
                   "or set feed.allow_insecure_remote = true")
            raise FeedError(msg)
        self.drops = 0
        self.sent = 0
        self._context = zmq.Context()
        self._auth = None
        self._socket = self._context.socket(zmq.PUB)
        try:
            self._socket.setsockopt(zmq.SNDHWM, config.send_hwm)
            self._socket.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
            if config.curve.enabled:
                self._setup_curve(config)
            self._socket.bind(config.endpoint)
            self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)  # port "*" resolved
        except zmq.ZMQError as exc:
            self.close()
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            msg = f"cannot bind the feed on {config.endpoint}: {reason}"
            raise FeedError(msg) from None
        except FeedError:
            self.close()
            raise
        log.info("feed_bound", endpoint=self.endpoint, curve=config.curve.enabled,
                 send_hwm=config.send_hwm)

    def _setup_curve(self, config: FeedConfig) -> None:
        """CURVE server: our keys from the secret key file, clients checked by a ZAP thread."""
        from zmq.auth.thread import ThreadAuthenticator

        curve = config.curve
        key_option = "feed.curve.server_secret_key_file"
        public, secret = _load_keys(curve.server_secret_key_file, key_option)
        if secret is None:
            msg = f"{key_option}: {curve.server_secret_key_file} has no secret key"
            raise FeedError(msg)
        clients = curve.authorized_clients_dir
        if clients and not Path(clients).is_dir():
            msg = f"feed.curve.authorized_clients_dir: {clients} is not a directory"
            raise FeedError(msg)
        self._auth = ThreadAuthenticator(self._context, log=None)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=clients or zmq.auth.CURVE_ALLOW_ANY)
        self._socket.curve_secretkey = secret
        self._socket.curve_publickey = public
        self._socket.curve_server = True

    def publish(self, message: Message) -> bool:
        """Send (seq already stamped by a `Sequencer`); False when the socket refused it."""
        try:
            self._socket.send_multipart(message.to_frames(), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.drops += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the socket (queued messages get CLOSE_LINGER_MS to leave) and the context."""
        if self._context.closed:
            return
        self._socket.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._context.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_keys(path: str, key: str) -> tuple[bytes, bytes | None]:
    """(public, secret) from a zmq.auth certificate file; FeedError naming the config key."""
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        msg = f"{key}: cannot load a CURVE key from {path}: {exc}"
        raise FeedError(msg) from None
