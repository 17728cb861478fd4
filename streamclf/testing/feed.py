"""A feed recorder: every message of a feed, with the wall-clock time it was received.

The SUB socket lives in the recorder's own thread (a ZeroMQ socket belongs to one thread); the
caller reads the lists and waits on predicates over them. Made before the daemon binds, it
misses nothing (no slow joiner).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Self

from streamclf.feed.schema import GenreMessage, Message, StatusMessage
from streamclf.feed.subscriber import Subscriber
from streamclf.testing.daemon import wait_for


class FeedRecorder:
    """Records every message on `endpoint` under `topics` and its receive time (time.time())."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",)) -> None:
        self.endpoint = endpoint
        self.topics = topics
        self.messages: list[Message] = []
        self.received: list[float] = []  # time.time() at each message's arrival, in step
        self.lost = 0
        self.malformed = 0
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed-recorder", daemon=True)

    def _run(self) -> None:
        with Subscriber(self.endpoint, self.topics) as sub:
            self._ready.set()
            while not self._stopping.is_set():
                message = sub.recv(timeout_s=0.1)
                if message is not None:
                    self.received.append(time.time())
                    self.messages.append(message)
                self.lost, self.malformed = sub.lost, sub.malformed

    def of(self, kind: type, stream: str | None = None) -> list:
        return [m for m in list(self.messages)
                if isinstance(m, kind) and (stream is None or m.stream == stream)]

    def since(self, index: int) -> list[tuple[Message, float]]:
        """(message, receive time) for the messages from position `index` on."""
        n = len(self.messages)
        return list(zip(self.messages[index:n], self.received[index:n], strict=True))

    def genre_count(self, stream: str) -> int:
        return len(self.of(GenreMessage, stream))

    def last_status(self, stream: str) -> StatusMessage | None:
        statuses = self.of(StatusMessage, stream)
        return statuses[-1] if statuses else None

    def final_status(self, stream: str) -> StatusMessage | None:
        finals = [m for m in self.of(StatusMessage, stream) if m.final]
        return finals[-1] if finals else None

    def seq_gaps(self) -> dict[str, list[tuple[int, int]]]:
        """Per topic, each (previous seq, next seq) pair that is not consecutive."""
        last: dict[str, int] = {}
        gaps: dict[str, list[tuple[int, int]]] = {}
        for m in list(self.messages):
            if m.topic in last and m.seq != last[m.topic] + 1:
                gaps.setdefault(m.topic, []).append((last[m.topic], m.seq))
            last[m.topic] = m.seq
        return gaps

    def wait(self, predicate: Callable[[], bool], *, timeout_s: float) -> bool:
        return wait_for(predicate, timeout_s=timeout_s)

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, settle_s: float = 0.5) -> None:
        """Stop after `settle_s` more of listening (so a final status in flight arrives)."""
        if self._thread.is_alive():
            time.sleep(settle_s)
            self._stopping.set()
            self._thread.join(5)
