"""ICY (Shoutcast/Icecast) in-band metadata: the title of what an HTTP stream is playing.

A client that sends `Icy-MetaData: 1` gets `icy-metaint: N` in the response headers, then N
bytes of audio, one length byte L, L*16 bytes of metadata (`StreamTitle='Artist - Title';`,
NUL-padded; L = 0 when nothing changed), N bytes of audio, and so on. `IcyDemuxer` is the pure
streaming parser; `IcyTitleWatcher` is a thread that keeps one such connection open beside the
audio source (ffmpeg reads the audio on its own connection) and queues each new title.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import re
import socket
import threading
import time
import urllib.parse

import structlog

from streamclf.thread_names import name_this_thread

log = structlog.get_logger(__name__)

STREAM_TITLE = re.compile(rb"StreamTitle='(.*?)';", re.DOTALL)
CONNECT_TIMEOUT_S = 10.0
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0
READ_BYTES = 16 * 1024


def stream_title(block: bytes) -> str | None:
    """The StreamTitle of one metadata block, or None when the block has none."""
    found = STREAM_TITLE.search(block.rstrip(b"\0"))
    return None if found is None else found.group(1).decode("utf-8", "replace").strip()


class IcyDemuxer:
    """Splits an ICY response body into audio bytes and the titles of its metadata blocks."""

    def __init__(self, metaint: int) -> None:
        if metaint <= 0:
            msg = f"icy-metaint must be positive, got {metaint}"
            raise ValueError(msg)
        self.metaint = metaint
        self.reset()

    def reset(self) -> None:
        self._audio_left = self.metaint  # audio bytes before the next length byte
        self._meta_left = 0  # metadata bytes still to collect
        self._meta = bytearray()

    def push(self, data: bytes) -> tuple[bytes, list[str]]:
        """Feed response bytes; returns (the audio among them, titles of completed blocks)."""
        audio = bytearray()
        titles: list[str] = []
        view = memoryview(data)
        while view:
            if self._audio_left:
                take = min(self._audio_left, len(view))
                audio += view[:take]
                self._audio_left -= take
                view = view[take:]
            elif self._meta_left == 0 and not self._meta:
                self._meta_left = view[0] * 16
                view = view[1:]
                if self._meta_left == 0:
                    self._audio_left = self.metaint
            else:
                take = min(self._meta_left, len(view))
                self._meta += view[:take]
                self._meta_left -= take
                view = view[take:]
                if self._meta_left == 0:
                    title = stream_title(bytes(self._meta))
                    if title is not None:
                        titles.append(title)
                    self._meta.clear()
                    self._audio_left = self.metaint
        return bytes(audio), titles


class IcyTitleWatcher(threading.Thread):
    """Keeps an ICY connection to `url` and queues (monotonic time, title) on each new title.

    Servers repeat the title (every block after a listener joins, or after a reconnect); only a
    title different from the last one queued counts. A server without ICY metadata ends the
    watcher quietly (`state = "none"`); a lost connection is retried with back-off.
    """

    def __init__(self, url: str) -> None:
        super().__init__(name="icy-titles", daemon=True)
        self.url = url
        self.titles: collections.deque[tuple[float, str]] = collections.deque(maxlen=64)
        self.state = "connecting"
        self._last: str | None = None
        self._stopping = threading.Event()
        self._connection: http.client.HTTPConnection | None = None

    def run(self) -> None:
        name_this_thread()
        delay_s = RETRY_INITIAL_S
        while not self._stopping.is_set():
            try:
                if not self._follow():
                    self.state = "none"
                    log.info("icy_no_metadata", url=self.url)
                    return
                delay_s = RETRY_INITIAL_S
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if not self._stopping.is_set():
                    self.state = "retrying"
                    log.warning("icy_connection_lost", url=self.url, error=str(exc),
                                retry_in_s=delay_s)
            self._stopping.wait(delay_s)
            delay_s = min(delay_s * 2, RETRY_MAX_S)

    def _follow(self) -> bool:
        """Read one connection until it ends; False when the server sends no ICY metadata."""
        parts = urllib.parse.urlsplit(self.url)
        https = parts.scheme == "https"
        kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
        self._connection = kind(parts.netloc, timeout=CONNECT_TIMEOUT_S)
        try:
            path = parts.path or "/"
            self._connection.request("GET", f"{path}?{parts.query}" if parts.query else path,
                                     headers={"Icy-MetaData": "1", "User-Agent": "streamclf"})
            response = self._connection.getresponse()
            if response.status != 200:
                msg = f"HTTP {response.status} {response.reason}"
                raise http.client.HTTPException(msg)
            metaint = response.getheader("icy-metaint")
            if metaint is None:
                return False
            demuxer = IcyDemuxer(int(metaint))
            self.state = "connected"
            while not self._stopping.is_set():
                data = response.read1(READ_BYTES)
                if not data:
                    msg = "the server closed the stream"
                    raise ConnectionError(msg)
                for title in demuxer.push(data)[1]:
                    if title != self._last:
                        self._last = title
                        self.titles.append((time.monotonic(), title))
            return True
        finally:
            self._connection.close()

    def take_before(self, monotonic_s: float) -> list[tuple[float, str]]:
        """The queued titles that arrived before `monotonic_s`, oldest first (one consumer)."""
        taken = []
        while self.titles and self.titles[0][0] <= monotonic_s:
            taken.append(self.titles.popleft())
        return taken

    def stop(self) -> None:
        self._stopping.set()
        connection = self._connection
        if connection is not None and connection.sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing to wake
                connection.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read at once


def is_http_url(url: str) -> bool:
    """True for the URLs an ICY title watcher can follow."""
    return urllib.parse.urlsplit(url).scheme in ("http", "https")
