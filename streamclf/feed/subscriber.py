"""A client of the feed: connect, filter by topic prefix, decode, survive a hostile publisher.

ZeroMQ reconnects by itself (RECONNECT_IVL grows to RECONNECT_IVL_MAX); MAXMSGSIZE makes it drop
the connection to a peer that sends an oversized frame before buffering it, and frames past the
second of a message are discarded unread, so a publisher cannot exhaust the client's memory.
Malformed messages are skipped and counted (`malformed`); seq gaps are counted (`lost`).
`run_subscribe` is the `streamclf subscribe` command.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Self, TextIO

import structlog
import zmq
import zmq.auth

from streamclf.errors import FeedError
from streamclf.feed.schema import (
    MAX_PAYLOAD_BYTES,
    AlarmMessage,
    ChangeMessage,
    GenreMessage,
    Message,
    MessageError,
    StatusMessage,
    TrackMessage,
    decode_frames,
)

log = structlog.get_logger(__name__)

RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000
RECEIVE_HWM = 10_000  # messages; the newest beyond this are dropped by ZeroMQ (and seen as gaps)


@dataclass(frozen=True)
class CurveClient:
    """Keys to reach a CURVE feed: the server's public key file, and our own key pair file
    (`NAME.key_secret`); without our own, a throwaway pair is made (enough when the server
    accepts any client)."""

    server_public_key_file: str
    client_secret_key_file: str = ""


class Subscriber:
    """SUB socket on `endpoint` for topic prefixes `topics` ("" = everything)."""

    def __init__(self, endpoint: str, topics: Sequence[str] = ("",), *,
                 curve: CurveClient | None = None,
                 max_message_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.endpoint = endpoint
        self.malformed = 0
        self.lost = 0
        self._last_seq: dict[str, int] = {}
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
            self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            self._socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            self._socket.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            if curve is not None:
                self._setup_curve(curve)
            for topic in topics:
                self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
            self._socket.connect(endpoint)
        except (zmq.ZMQError, UnicodeEncodeError) as exc:
            self.close()
            msg = f"cannot subscribe to {endpoint}: {getattr(exc, 'strerror', exc)}"
            raise FeedError(msg) from None
        except FeedError:
            self.close()
            raise

    def _setup_curve(self, curve: CurveClient) -> None:
        server_public, _ = _load_keys(curve.server_public_key_file)
        if curve.client_secret_key_file:
            public, secret = _load_keys(curve.client_secret_key_file)
            if secret is None:
                msg = f"{curve.client_secret_key_file} has no secret key"
                raise FeedError(msg)
        else:
            public, secret = zmq.curve_keypair()
        self._socket.curve_serverkey = server_public
        self._socket.curve_publickey = public
        self._socket.curve_secretkey = secret

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next valid message, or None when `timeout_s` passes first (None = wait forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining_ms = None if deadline is None else max(0, (deadline - time.monotonic()) * 1e3)
            if not self._socket.poll(remaining_ms):
                return None
            frames = self._recv_frames()
            try:
                message = decode_frames(frames)
            except MessageError as exc:
                self.malformed += 1
                log.debug("feed_malformed_message", reason=str(exc))
                continue
            self._count_gap(message)
            return message

    def _recv_frames(self) -> list[bytes]:
        """One multipart message, keeping at most 3 frames (enough to tell it is malformed)."""
        frames = [self._socket.recv()]
        while self._socket.getsockopt(zmq.RCVMORE):
            frame = self._socket.recv()
            if len(frames) < 3:
                frames.append(frame)
        return frames

    def _count_gap(self, message: Message) -> None:
        last = self._last_seq.get(message.topic)
        if last is not None and message.seq > last + 1:
            self.lost += message.seq - last - 1
        self._last_seq[message.topic] = message.seq  # a lower seq means the publisher restarted

    def messages(self, timeout_s: float | None = None) -> Iterator[Message]:
        """Messages until none arrives for `timeout_s` (None = forever)."""
        while (message := self.recv(timeout_s)) is not None:
            yield message

    def __iter__(self) -> Iterator[Message]:
        return self.messages()

    def close(self) -> None:
        if not self._context.closed:
            self._socket.close()
            self._context.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_keys(path: str) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        msg = f"cannot load a CURVE key from {path}: {exc}"
        raise FeedError(msg) from None


def format_message(message: Message) -> str:
    """One readable line per message, for people watching a terminal."""
    clock = time.strftime("%H:%M:%S", time.localtime(message.wall))
    head = f"{clock} {message.stream:<10} #{message.seq:<6}"
    if isinstance(message, GenreMessage):
        top = ", ".join(f"{tag} {p:.2f}" for tag, p in message.top)
        unknown = ""
        if message.candidates:
            unknown = " (" + ", ".join(f"{g}?" for g, _ in message.candidates) + ")"
        return (f"{head} {message.genre:<14}{unknown} {message.confidence:.2f}  "
                f"raw {message.raw_genre}  {message.level_dbfs:6.1f} dBFS  "
                f"{message.latency_ms:5.0f} ms  [{top}]")
    if isinstance(message, ChangeMessage):
        return (f"{head} change {message.previous or '-'} -> {message.genre} "
                f"({message.confidence:.2f}) at {message.t1:.1f} s")
    if isinstance(message, AlarmMessage):
        state = "START" if message.active else "end"
        detail = f" ({message.detail})" if message.detail else ""
        return (f"{head} alarm {message.alarm} {state}{detail}: {message.value:.1f} "
                f"(limit {message.threshold:.1f})")
    if isinstance(message, TrackMessage):
        if message.event == "start":
            return f"{head} track start at {message.t:.1f} s: {message.title or '(no title)'}"
        return (f"{head} track end at {message.t:.1f} s: {message.title or '(no title)'}, "
                f"{message.genre} ({message.confidence:.2f}), {message.duration_s:.0f} s")
    assert isinstance(message, StatusMessage)
    final = " final" if message.final else ""
    return (f"{head} status {message.device_state}{final} up {message.uptime_s:.0f} s, "
            f"{message.windows} windows, xruns {message.xruns}, ring overruns "
            f"{message.ring_overruns}, dropped windows {message.dropped_windows}, feed drops "
            f"{message.feed_drops}, engine p50 {message.engine_p50_ms:.1f} / p99 "
            f"{message.engine_p99_ms:.1f} ms ({message.engine}, {message.model})")


def run_subscribe(endpoint: str, topic: str = "", count: int | None = None, as_json: bool = False,
                  out: TextIO = sys.stdout, *, timeout_s: float | None = None,
                  curve: CurveClient | None = None) -> int:
    """`streamclf subscribe`: print `count` messages (None = until interrupted) and return 0.

    `timeout_s` bounds the wait for each message; running out is a `FeedError` (exit code 6).
    """
    with Subscriber(endpoint, (topic,), curve=curve) as sub:
        received = 0
        while count is None or received < count:
            message = sub.recv(timeout_s)
            if message is None:
                msg = f"no message from {endpoint} within {timeout_s} s"
                raise FeedError(msg)
            line = json.dumps(message.to_dict()) if as_json else format_message(message)
            out.write(line + "\n")
            out.flush()
            received += 1
        return 0
