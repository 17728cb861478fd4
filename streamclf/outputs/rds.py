"""RDS / RBDS: the programme type (PTY) of the current genre, and optionally its RT+ genre tag.

For each window of a stream it works out what is on air: `talk` when the window's content is
speech (`content == "speech"`, or the published genre `"talk"`, from content detection), else the
published genre; nothing for "silence" and "unknown". When that changes it writes, in one write,
to the control pipe of an RDS encoder:

    PTY 11                      the code of one of two tables: `rds` (Europe, EN 50067) or
                                `rbds` (North America, NRSC-4-B), which number types differently
    RT Genre: rock              with `radiotext = true`: the RadioText, and its RT+ tags
    RTP 11,7,3,0,0,0            (content type 11 = ITEM.GENRE, start 7, length marker 3 =
    RTPF 1,1                    characters after the first) and RT+ flags (running, toggle)

the commands of mpxgen's control pipe (PiFmAdv's, which the open encoders derived from PiFmRds
read, with mpxgen's RT+ additions). A label with no code in the table writes no PTY line: the
encoder keeps the PTY it has, since a wrong type is worse than a stale one.

The pipe is opened without blocking: with no reader on the FIFO the open fails (ENXIO), which
the worker counts and retries with back-off, so a stopped encoder never holds up the daemon.
"""

from __future__ import annotations

import os

from streamclf.config import OutputConfig
from streamclf.feed.schema import GenreMessage, Message
from streamclf.smoothing import SILENCE, UNKNOWN

TALK = "talk"
SPEECH = "speech"  # the content label of a speech window (content detection)
# genre family → PTY code. RDS: 10 pop, 11 rock, 12 easy listening, 14 serious classical,
# 15 other music, 24 jazz, 25 country, 28 folk. RBDS: 5 rock, 9 top 40, 10 country, 12 soft,
# 14 jazz, 15 classical, 16 rhythm and blues, 26 hip hop.
PTY_CODES: dict[str, dict[str, int]] = {
    "rds": {"rock": 11, "metal": 11, "punk": 11, "pop": 10, "dance": 10, "electronic": 15,
            "hip-hop": 15, "rnb": 15, "blues": 15, "jazz": 24, "country": 25, "folk": 28,
            "classical": 14, "ambient": 12},
    "rbds": {"rock": 5, "metal": 5, "punk": 5, "pop": 9, "dance": 9, "electronic": 9,
             "hip-hop": 26, "rnb": 16, "blues": 16, "jazz": 14, "country": 10,
             "classical": 15, "ambient": 12},
}
# Speech of unknown subject: RDS 9 "Varied" (speech programmes not covered by the other speech
# types; 1..8 name a subject: news, current affairs, information, sport, ...), RBDS 4 "Talk".
TALK_CODES = {"rds": 9, "rbds": 4}
RT_PLUS_GENRE = 11  # RT+ content type ITEM.GENRE
RADIOTEXT_PREFIX = "Genre: "
RADIOTEXT_CHARS = 64


def on_air_label(genre: str, content: str | None = None) -> str | None:
    """"talk" for speech, the genre for music, None for silence and unknown (keep what is on)."""
    if content == SPEECH or genre == TALK:
        return TALK
    return None if genre in (SILENCE, UNKNOWN) else genre


def pty_command(label: str, table: str) -> bytes | None:
    """The encoder line for a label (`PTY 11\\n`), or None when the table has no code for it."""
    code = TALK_CODES[table] if label == TALK else PTY_CODES[table].get(label)
    return None if code is None else f"PTY {code}\n".encode()


def radiotext_commands(label: str, *, toggle: int) -> bytes:
    """`RT Genre: <label>`, its RT+ ITEM.GENRE tag over the label, and the RT+ flags."""
    text = (RADIOTEXT_PREFIX + label)[:RADIOTEXT_CHARS]
    start, length = len(RADIOTEXT_PREFIX), len(text) - len(RADIOTEXT_PREFIX)
    return (f"RT {text}\nRTP {RT_PLUS_GENRE},{start},{length - 1},0,0,0\n"
            f"RTPF 1,{toggle}\n").encode()


class RdsSink:
    """Writes PTY (and RT+) commands to the encoder's control pipe (a FIFO, or a file it tails)."""

    def __init__(self, config: OutputConfig) -> None:
        self._config = config
        self._fd: int | None = None
        self._on_air: str | None = None  # the label the encoder was last given
        self._toggle = 0  # RT+ item toggle: flips with each new item

    def connect(self) -> None:
        self._fd = os.open(self._config.pipe_path,
                           os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)

    def send(self, message: Message) -> None:
        if not isinstance(message, GenreMessage):
            return
        label = on_air_label(message.genre, message.content)
        if label is None or label == self._on_air:
            return
        toggle = 1 - self._toggle
        lines = pty_command(label, self._config.pty_table) or b""
        if self._config.radiotext:
            lines += radiotext_commands(label, toggle=toggle)
        if lines:
            written = os.write(self._fd, lines)  # short lines: atomic on a pipe (< PIPE_BUF)
            if written != len(lines):
                msg = f"the encoder's pipe took {written} of {len(lines)} bytes"
                raise BlockingIOError(msg)
        self._on_air, self._toggle = label, toggle

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
