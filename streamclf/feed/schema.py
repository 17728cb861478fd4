"""The feed's wire format (v1): each message a frozen dataclass with its encoding beside it.

A message is two ZeroMQ frames: the topic `<kind>.<stream>` (ASCII) and a msgpack map whose keys
are the dataclass fields. Every field, type and unit is documented in docs/feed.md. Readers ignore
keys they do not know (adding a field is not a breaking change); any breaking change bumps
`VERSION`. Decoding trusts nothing: sizes are bounded before and while unpacking, every field is
type-checked, and anything malformed is a `MessageError`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from streamclf.config import STREAM_ID_PATTERN
from streamclf.errors import FeedError

VERSION = 1
MAX_TOPIC_BYTES = 128
MAX_PAYLOAD_BYTES = 256 * 1024  # a status with 1000 labels is ~20 KiB; the subscriber's MAXMSGSIZE
MAX_STR_CHARS = 256
MAX_LIST_ITEMS = 4096

TagScores = list[tuple[str, float]]  # [[tag, p], …] on the wire: msgpack arrays of two


class MessageError(FeedError):
    """A received message is malformed: wrong frames, oversized, wrong types, unknown kind."""


@dataclass(frozen=True, kw_only=True)
class _Message:
    KIND: ClassVar[str]
    v: int = VERSION
    stream: str
    seq: int = 0

    @property
    def topic(self) -> str:
        return f"{self.KIND}.{self.stream}"

    def to_frames(self) -> list[bytes]:
        """[topic, msgpack payload]; optional fields that are None are left out."""
        payload = {name: getattr(self, name) for name in _FIELDS[type(self)]}
        payload = {k: v for k, v in payload.items() if v is not None}
        return [self.topic.encode("ascii"), msgpack.packb(payload, use_bin_type=True)]

    @classmethod
    def from_frames(cls, frames: typing.Sequence[bytes]) -> typing.Self:
        """Decode and validate; raise `MessageError` unless the frames are a valid `cls`."""
        message = decode_frames(frames)
        if not isinstance(message, cls):
            msg = f"expected a {cls.KIND} message, got topic {message.topic!r}"
            raise MessageError(msg)
        return message

    def to_dict(self) -> dict[str, Any]:
        """The message as a JSON-ready dict with its topic; non-finite floats become None."""
        out: dict[str, Any] = {"topic": self.topic}
        out.update((name, _finite_or_none(getattr(self, name))) for name in _FIELDS[type(self)])
        return out


@dataclass(frozen=True, kw_only=True)
class GenreMessage(_Message):
    """One classified window of one stream (topic `genre.<stream>`)."""

    KIND: ClassVar[str] = "genre"
    t0: float
    t1: float
    wall: float
    latency_ms: float
    genre: str
    confidence: float
    raw_genre: str
    top: TagScores
    level_dbfs: float
    silence: bool
    model: str
    engine: str
    probs: list[float] | None = None
    candidates: TagScores | None = None
    content: str | None = None  # held: "music", "speech", "music+speech", "silence"
    raw_content: str | None = None  # this window's own
    content_probs: TagScores | None = None  # this window's, [[label, p], …] in that order


@dataclass(frozen=True, kw_only=True)
class ChangeMessage(_Message):
    """The smoothed genre of a stream changed (topic `change.<stream>`)."""

    KIND: ClassVar[str] = "change"
    wall: float
    t1: float
    genre: str
    previous: str
    confidence: float
    content: str | None = None  # the held content, and the one before it
    previous_content: str | None = None


@dataclass(frozen=True, kw_only=True)
class StatusMessage(_Message):
    """Health counters of one stream, every `status_interval_s` (topic `status.<stream>`)."""

    KIND: ClassVar[str] = "status"
    wall: float
    uptime_s: float
    device_state: str
    xruns: int
    ring_overruns: int
    dropped_windows: int
    feed_drops: int
    engine_p50_ms: float
    engine_p99_ms: float
    windows: int
    labels: list[str]
    genres: list[str]
    model: str
    engine: str
    final: bool
    stalled: str | None = None  # "worker" or "source" while that part of the stream is stuck
    alarms: list[str] | None = None
    momentary_lufs: float | None = None
    short_term_lufs: float | None = None
    integrated_lufs: float | None = None
    loudness_range_lu: float | None = None
    true_peak_dbtp: float | None = None
    outputs: list[tuple[str, str, int, int, int]] | None = None  # docs/feed.md: status


@dataclass(frozen=True, kw_only=True)
class AlarmMessage(_Message):
    """An alarm of one stream started (`active`) or ended (topic `alarm.<stream>`)."""

    KIND: ClassVar[str] = "alarm"
    wall: float
    alarm: str
    active: bool
    value: float
    threshold: float
    detail: str


@dataclass(frozen=True, kw_only=True)
class TrackMessage(_Message):
    """A track of a stream started or ended (topic `track.<stream>`); docs/feed.md."""

    KIND: ClassVar[str] = "track"
    event: str  # "start" or "end"
    wall: float
    t: float  # stream time of the boundary, s
    title: str  # "" when the source gives none
    source: str  # what found the boundary: "icy" (titles), "audio" (boundaries.py), "end" (stop)
    genre: str | None = None  # end only: the track's genre over its windows
    confidence: float | None = None
    duration_s: float | None = None
    windows: int | None = None


Message = GenreMessage | ChangeMessage | StatusMessage | AlarmMessage | TrackMessage
KINDS: dict[str, type[_Message]] = {
    m.KIND: m for m in (GenreMessage, ChangeMessage, StatusMessage, AlarmMessage, TrackMessage)}
_HINTS = {cls: typing.get_type_hints(cls) for cls in KINDS.values()}
# Field names once per kind: `dataclasses.fields()` builds a new tuple on every call, and those
# tuples filled CPython's tuple free list, ~1 MiB of the daemon's early memory growth.
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in KINDS.values()}


class Sequencer:
    """Numbers messages gap-free per topic (kind and stream) before anything sees them.

    The pipeline stamps every message once, so the feed, the live view and the JSON lines of
    `listen` all show the same seq; a message the socket then refuses still used its number,
    so the loss shows up as a gap at the subscriber.
    """

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def stamp(self, message: Message) -> Message:
        topic = message.topic
        seq = self._next.get(topic, 0)
        self._next[topic] = seq + 1
        return dataclasses.replace(message, seq=seq)


def decode_frames(frames: typing.Sequence[bytes]) -> Message:
    """[topic, payload] → the message it holds; `MessageError` on anything malformed."""
    if len(frames) != 2:
        msg = f"expected 2 frames [topic, payload], got {len(frames)}"
        raise MessageError(msg)
    topic_bytes, payload = bytes(frames[0]), bytes(frames[1])
    if len(topic_bytes) > MAX_TOPIC_BYTES or len(payload) > MAX_PAYLOAD_BYTES:
        msg = f"oversized message ({len(topic_bytes)} + {len(payload)} bytes)"
        raise MessageError(msg)
    kind, _, stream = topic_bytes.decode("ascii", "replace").partition(".")
    cls = KINDS.get(kind)
    if cls is None or not STREAM_ID_PATTERN.fullmatch(stream):
        msg = f"unknown topic {topic_bytes[:40]!r}"
        raise MessageError(msg)
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True,
                               max_str_len=MAX_PAYLOAD_BYTES,
                               max_bin_len=0, max_ext_len=0, max_array_len=MAX_LIST_ITEMS,
                               max_map_len=MAX_LIST_ITEMS)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        msg = f"undecodable payload on {kind}.{stream}: {type(exc).__name__}"
        raise MessageError(msg) from None
    if not isinstance(data, dict):
        msg = f"payload on {kind}.{stream} is not a map"
        raise MessageError(msg)
    if data.get("v") != VERSION:
        msg = f"unsupported feed version {_short(data.get('v'))} (this reader knows {VERSION})"
        raise MessageError(msg)
    values = {}
    for name, hint in _HINTS[cls].items():
        if name == "KIND":
            continue
        if name not in data and not _optional(hint):
            msg = f"{kind}.{stream}: missing field {name!r}"
            raise MessageError(msg)
        values[name] = _check(data.get(name), hint, name)
    if values["stream"] != stream or values["seq"] < 0:
        msg = f"{kind}.{stream}: bad stream {_short(values['stream'])} or seq {values['seq']}"
        raise MessageError(msg)
    return cls(**values)


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _check(value: Any, hint: Any, name: str) -> Any:
    """Type-check one decoded value against a field's hint; ints pass as floats."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and _optional(hint):
            return None
        (hint,) = [h for h in typing.get_args(hint) if h is not type(None)]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and isinstance(value, list) and len(value) <= MAX_LIST_ITEMS:
        return [_check(item, args[0], name) for item in value]
    if origin is tuple and isinstance(value, list) and len(value) == len(args):
        return [_check(item, h, name) for item, h in zip(value, args, strict=True)]
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str) and len(value) <= MAX_STR_CHARS:
        return value
    msg = f"field {name!r}: expected {getattr(hint, '__name__', hint)}, got {_short(value)}"
    raise MessageError(msg)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value
