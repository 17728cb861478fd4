"""RDS / RBDS: the programme-type code (PTY) of the current genre, for an FM encoder.

On each change of a stream's published genre it writes one line, `PTY <code>`, to the control
pipe of an RDS encoder (the PTY command of PiFmAdv's control FIFO, which the open encoders
derived from PiFmRds read). The code comes
from one of two tables: `rds` (Europe, EN 50067) or `rbds` (North America, NRSC-4-B), which number
the music types differently. A genre with no fitting code, and "silence" or "unknown", leaves
the encoder's PTY as it is: a wrong type is worse than a stale one.

The pipe is opened without blocking: with no reader on the FIFO the open fails (ENXIO), which
the worker counts and retries with back-off, so a stopped encoder never holds up the daemon.
"""

from __future__ import annotations

import os

from streamclf.config import OutputConfig
from streamclf.feed.schema import ChangeMessage, Message

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


def pty_command(genre: str, table: str) -> bytes | None:
    """The encoder line for a genre (`PTY 11\\n`), or None when the table has no code for it."""
    code = PTY_CODES[table].get(genre)
    return None if code is None else f"PTY {code}\n".encode()


class RdsSink:
    """Writes PTY commands to the encoder's control pipe (a FIFO, or a file it tails)."""

    def __init__(self, config: OutputConfig) -> None:
        self._config = config
        self._fd: int | None = None

    def connect(self) -> None:
        self._fd = os.open(self._config.pipe_path,
                           os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)

    def send(self, message: Message) -> None:
        if not isinstance(message, ChangeMessage):
            return
        line = pty_command(message.genre, self._config.pty_table)
        if line is not None:
            written = os.write(self._fd, line)  # one short line: atomic on a pipe (< PIPE_BUF)
            if written != len(line):
                msg = f"the encoder's pipe took {written} of {len(line)} bytes"
                raise BlockingIOError(msg)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
