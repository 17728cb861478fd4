"""Sample feed messages, the decoder's round-trip oracle (shared with tools/fuzz.py), and a way
to wait out ZeroMQ's slow-joiner window, for the feed tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from streamclf.feed.schema import (
    AlarmMessage,
    ChangeMessage,
    GenreMessage,
    Message,
    StatusMessage,
    decode_frames,
)
from streamclf.feed.subscriber import Subscriber

LABELS = ["rock", "pop", "jazz", "guitar"]


def genre_message(stream: str = "main", **overrides) -> GenreMessage:
    fields = {"stream": stream, "seq": 0, "t0": 1.0, "t1": 3.992, "wall": 1.7e9,
              "latency_ms": 412.5, "genre": "rock", "confidence": 0.61, "raw_genre": "pop",
              "top": [["rock", 0.7], ["guitar", 0.5]], "level_dbfs": -18.25, "silence": False,
              "model": "MSD_musicnn", "engine": "onnxruntime"}
    return GenreMessage(**(fields | overrides))


def change_message(stream: str = "main", **overrides) -> ChangeMessage:
    fields = {"stream": stream, "seq": 0, "wall": 1.7e9, "t1": 12.0, "genre": "jazz",
              "previous": "rock", "confidence": 0.55}
    return ChangeMessage(**(fields | overrides))


def status_message(stream: str = "main", **overrides) -> StatusMessage:
    fields = {"stream": stream, "seq": 0, "wall": 1.7e9, "uptime_s": 10.5,
              "device_state": "running", "xruns": 1, "ring_overruns": 0, "dropped_windows": 2,
              "feed_drops": 0, "engine_p50_ms": 12.5, "engine_p99_ms": 30.0, "windows": 9,
              "labels": LABELS, "genres": ["rock", "pop", "jazz"], "model": "MSD_musicnn",
              "engine": "onnxruntime", "final": False}
    return StatusMessage(**(fields | overrides))


def alarm_message(stream: str = "main", **overrides) -> AlarmMessage:
    fields = {"stream": stream, "seq": 0, "wall": 1.7e9, "alarm": "loudness", "active": True,
              "value": -14.2, "threshold": -23.0, "detail": "above target"}
    return AlarmMessage(**(fields | overrides))


def assert_round_trips(message: Message) -> None:
    """A decoded message re-encodes and decodes to the same message: compared as frames, so that
    a NaN anywhere in it (never equal to itself) counts as the same too."""
    frames = message.to_frames()
    again = decode_frames(frames)
    assert type(again) is type(message) and again.to_frames() == frames, (message, again)


def wait_joined(send_probe: Callable[[], None], sub: Subscriber, timeout_s: float = 10.0) -> None:
    """Send probes until the subscriber gets one (a SUB misses what was sent before it joined),
    then drain the probes still in flight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        send_probe()
        if sub.recv(timeout_s=0.05) is not None:
            while sub.recv(timeout_s=0.2) is not None:
                pass
            return
    raise AssertionError("subscriber never joined")
