"""OSC over UDP (python-osc), for lighting desks and VJ software.

Per genre message of a stream, under `address_prefix` (default `/streamclf`):

- `<prefix>/<stream>/genre` the published genre as a string (`"rock"`, `"silence"`, …);
- `<prefix>/<stream>/confidence` its confidence, a float;
- `<prefix>/<stream>/genre/<family>` one float per genre family, the window's probability: what
  QLC+ or a VJ program maps to a channel. Every family when the feed carries `probs`
  (`feed.publish_probs = true`); otherwise those among the message's `top` tags.

The families and label order come from the stream's status message (sent at start and every
`status_interval_s`). Characters OSC reserves in addresses (space # * , / ? [ ] { }) become `_`.
"""

from __future__ import annotations

import re

from streamclf.config import OutputConfig
from streamclf.feed.schema import GenreMessage, Message, StatusMessage
from streamclf.outputs.worker import import_library

OSC_RESERVED = re.compile(r"[\s#*,/?\[\]{}]")


def osc_part(name: str) -> str:
    """A label as one OSC address part."""
    return OSC_RESERVED.sub("_", name)


def family_scores(message: GenreMessage, labels: list[str], genres: list[str]) -> dict[str, float]:
    """The genre families' probabilities this window tells: all of them from `probs`, else `top`."""
    wanted = set(genres)
    if message.probs is not None and len(message.probs) == len(labels):
        return {label: p for label, p in zip(labels, message.probs, strict=True) if label in wanted}
    return {label: p for label, p in message.top if label in wanted}


class OscSink:
    """A UDP client; one datagram per OSC message (UDP: nothing is acknowledged)."""

    def __init__(self, config: OutputConfig) -> None:
        self._udp = import_library(config, "pythonosc.udp_client", "python-osc")
        self._config = config
        self._client = None
        self._vocabulary: dict[str, tuple[list[str], list[str]]] = {}  # stream → (labels, genres)

    def connect(self) -> None:
        self._client = self._udp.SimpleUDPClient(self._config.host, self._config.target_port)

    def send(self, message: Message) -> None:
        if isinstance(message, StatusMessage):
            self._vocabulary[message.stream] = (message.labels, message.genres)
            return
        if not isinstance(message, GenreMessage):
            return
        base = f"{self._config.address_prefix}/{osc_part(message.stream)}"
        self._client.send_message(f"{base}/genre", message.genre)
        self._client.send_message(f"{base}/confidence", float(message.confidence))
        labels, genres = self._vocabulary.get(message.stream, ([], []))
        for family, p in family_scores(message, labels, genres).items():
            self._client.send_message(f"{base}/genre/{osc_part(family)}", float(p))

    def close(self) -> None:
        if self._client is not None:
            self._client._sock.close()  # python-osc has no close(); its socket is all it holds
            self._client = None
