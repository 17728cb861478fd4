"""One thread per output: a bounded queue in front of a sink that may be slow, down or gone.

The pipeline hands every feed message to `OutputWorker.offer`, which only appends to a bounded
deque (the oldest message is dropped and counted when it is full) and never waits, so a slow
Liquidsoap or a dead broker can neither slow the engine worker nor cost the feed a message. The
worker thread connects, sends in order, and on any failure closes the sink, waits (exponential
back-off from `retry_initial_s` to `retry_max_s`, reset by a success) and tries the same message
again. `health()` is what status messages report.
"""

from __future__ import annotations

import collections
import importlib
import threading
import time
from typing import Protocol

import structlog

from streamclf.config import OutputConfig
from streamclf.errors import ConfigError
from streamclf.feed.schema import Message
from streamclf.thread_names import name_this_thread

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 5.0  # the longest a sink may wait for its target to answer
DRAIN_AT_STOP_S = 0.3  # at stop, a connected sink gets this long for what is still queued


class Sink(Protocol):
    """One connection to a receiving program; used only from its worker's thread."""

    def connect(self) -> None:
        """Open the connection; raise (OSError or the library's error) when it cannot."""

    def send(self, message: Message) -> None:
        """Deliver what this output makes of `message` (often nothing); raise on failure."""

    def close(self) -> None:
        """Drop the connection; never raises."""


class OutputWorker(threading.Thread):
    """Feeds one sink from a bounded queue; retries with back-off; counts what it could not do."""

    def __init__(self, config: OutputConfig, sink: Sink) -> None:
        super().__init__(name=f"output-{config.name}", daemon=True)
        self.config = config
        self._sink = sink
        self._streams = frozenset(config.streams)
        self._queue: collections.deque[Message] = collections.deque()
        self._ready = threading.Condition()
        self._stopping = threading.Event()
        self.state = "connecting"
        self.sent = 0
        self.failures = 0
        self.dropped = 0

    def offer(self, message: Message) -> None:
        """Queue a message for the sink without waiting; the oldest goes when the queue is full."""
        if self._streams and message.stream not in self._streams:
            return
        with self._ready:
            if len(self._queue) >= self.config.queue_messages:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(message)
            self._ready.notify()

    def health(self) -> list[str | int]:
        """[name, state, sent, failures, dropped] for status messages."""
        return [self.config.name, self.state, self.sent, self.failures, self.dropped]

    def run(self) -> None:
        name_this_thread()
        delay_s = self.config.retry_initial_s
        connected = False
        while not self._stopping.is_set():
            with self._ready:
                while not self._queue and not self._stopping.is_set():
                    self._ready.wait()
                if self._stopping.is_set():
                    break
                message = self._queue[0]
            try:
                if not connected:
                    self._sink.connect()
                    connected = True
                    self.state = "connected"
                    log.info("output_connected", output=self.config.name)
                self._sink.send(message)
            except Exception as exc:  # noqa: BLE001 — a target's fault must never stop the daemon
                connected = self._failed(exc, delay_s)
                self._stopping.wait(delay_s)
                delay_s = min(delay_s * 2, self.config.retry_max_s)
                continue
            delay_s = self.config.retry_initial_s
            with self._ready:
                if self._queue and self._queue[0] is message:  # not dropped meanwhile
                    self._queue.popleft()
            self.sent += 1
        if connected:
            self._drain()
        self._sink.close()
        self.state = "stopped"

    def _failed(self, exc: Exception, delay_s: float) -> bool:
        """Count the failure, log the first of a run of them, close the sink; returns False."""
        self.failures += 1
        if self.state != "retrying":
            log.warning("output_failed", output=self.config.name, kind=self.config.kind,
                        error=str(exc) or type(exc).__name__, retry_in_s=delay_s)
        self.state = "retrying"
        self._sink.close()
        return False

    def _drain(self) -> None:
        """At stop: send what is queued (the final status) while the sink keeps up, no retries."""
        deadline = time.monotonic() + DRAIN_AT_STOP_S
        with self._ready:
            pending = list(self._queue)
            self._queue.clear()
        for message in pending:
            if time.monotonic() > deadline:
                self.dropped += 1
                continue
            try:
                self._sink.send(message)
            except Exception:  # noqa: BLE001 — stopping anyway: count it, try the next
                self.failures += 1
            else:
                self.sent += 1

    def stop(self) -> None:
        """Ask the thread to finish (it drains and closes); join it to wait."""
        self._stopping.set()
        with self._ready:
            self._ready.notify()


def import_library(config: OutputConfig, module: str, package: str):
    """Import an output's client library, or say in one line which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        msg = (f"output {config.name!r} (kind = \"{config.kind}\") needs the Python package "
               f"{package}: pip install 'streamclf[outputs]'")
        raise ConfigError(msg) from None
