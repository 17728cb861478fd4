"""Liquidsoap: the genre as stream metadata, through its telnet or Unix-socket server.

On each change of a stream's published genre (the first decision after start included), and at
each new track (`track.<stream>` start: the first window after it, whose genre the restarted
smoother decides), it sends

    <source_id>.insert genre="rock",genre_confidence="0.82"

the command that `server.insert_metadata(id="<source_id>", s)` registers in a Liquidsoap 2.x
script; the metadata then travels with the audio to every output (Icecast, files, HLS). A new
track's metadata replaces the old track's downstream, so the genre is sent again even when it
did not change.
Liquidsoap answers each command with its result and a line `END`.
"""

from __future__ import annotations

import socket

from streamclf.config import OutputConfig
from streamclf.feed.schema import ChangeMessage, GenreMessage, Message, TrackMessage
from streamclf.outputs.worker import CONNECT_TIMEOUT_S

REPLY_END = b"\nEND"
MAX_REPLY_BYTES = 64 * 1024


class LiquidsoapError(ConnectionError):
    """Liquidsoap closed the connection or answered a command with an error."""


def quote(value: str) -> str:
    """A value as Liquidsoap's metadata parser reads it: in double quotes, \\ and " escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def insert_command(source_id: str, message: ChangeMessage | GenreMessage) -> bytes:
    """The telnet line that inserts this message's genre and confidence as metadata."""
    fields = {"genre": message.genre, "genre_confidence": f"{message.confidence:.2f}"}
    pairs = ",".join(f"{key}={quote(value)}" for key, value in fields.items())
    return f"{source_id}.insert {pairs}\n".encode()


class LiquidsoapSink:
    """One server connection: TCP (telnet) to host:port, or the Unix socket at `socket_path`."""

    def __init__(self, config: OutputConfig) -> None:
        self._config = config
        self._sock: socket.socket | None = None
        self._new_track: set[str] = set()  # streams whose next window starts a track's metadata
        self._inserted_t1: dict[str, float] = {}  # per stream: the window last inserted

    def connect(self) -> None:
        config = self._config
        if config.socket_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT_S)
            try:
                sock.connect(config.socket_path)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((config.host, config.target_port), CONNECT_TIMEOUT_S)
        self._sock = sock

    def send(self, message: Message) -> None:
        stream = message.stream
        if isinstance(message, TrackMessage) and message.event == "start":
            self._new_track.add(stream)
        first_of_track = isinstance(message, GenreMessage) and stream in self._new_track
        if not (first_of_track or isinstance(message, ChangeMessage)):
            return
        if self._inserted_t1.get(stream) == message.t1:  # the change of a track's first window
            return
        self._sock.sendall(insert_command(self._config.source_id, message))
        reply = self._read_reply()
        if reply.startswith("ERROR"):
            raise LiquidsoapError(f"Liquidsoap answered: {reply}")
        self._new_track.discard(stream)
        self._inserted_t1[stream] = message.t1

    def _read_reply(self) -> str:
        reply = b""
        while REPLY_END not in b"\n" + reply:
            chunk = self._sock.recv(4096)
            if not chunk:
                msg = "Liquidsoap closed the connection"
                raise LiquidsoapError(msg)
            reply += chunk
            if len(reply) > MAX_REPLY_BYTES:
                msg = "Liquidsoap's reply has no END line"
                raise LiquidsoapError(msg)
        return (b"\n" + reply).partition(REPLY_END)[0].decode("utf-8", "replace").strip()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
