"""Every feed message, once numbered, to everyone who reads the feed: the PUB socket, the
outputs and the live view. Shared by the engine workers (one lock: the numbering and the PUB
socket, which belongs to one thread at a time); none of the receivers makes them wait."""

from __future__ import annotations

import queue
import threading
from typing import Protocol

from streamclf.feed.publisher import Publisher
from streamclf.feed.schema import GenreMessage, Message, Sequencer


class MessageConsumer(Protocol):
    """An in-process reader of the feed (`streamclf.outputs.Outputs`): takes without waiting."""

    def offer(self, message: Message) -> None: ...


class FeedFanout:
    """Stamps each message's `seq`, keeps each stream's latest genre message, and hands the
    message to the publisher, the outputs and the view queue (a full view queue drops it and
    counts). `publisher` and `outputs` are set once, before the engine worker starts."""

    def __init__(self, view_messages: queue.Queue | None = None) -> None:
        self.publisher: Publisher | None = None
        self.outputs: MessageConsumer | None = None
        self.view_messages = view_messages
        self.view_drops = 0
        self.latest: dict[str, GenreMessage] = {}
        self._sequence = Sequencer()
        self._lock = threading.Lock()

    def emit(self, message: Message) -> None:
        with self._lock:
            message = self._sequence.stamp(message)
            if isinstance(message, GenreMessage):
                self.latest[message.stream] = message
            if self.publisher is not None:
                self.publisher.publish(message)
            if self.outputs is not None:
                self.outputs.offer(message)
            if self.view_messages is not None:
                try:
                    self.view_messages.put_nowait(message)
                except queue.Full:
                    self.view_drops += 1
