"""Feed messages: frames round-trip, and decoding raises MessageError on anything malformed."""

from __future__ import annotations

import json
import math

import msgpack
import pytest
from feed_helpers import (
    alarm_message,
    assert_round_trips,
    change_message,
    genre_message,
    status_message,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from streamclf.errors import FeedError
from streamclf.feed.schema import (
    MAX_PAYLOAD_BYTES,
    VERSION,
    ChangeMessage,
    GenreMessage,
    MessageError,
    StatusMessage,
    decode_frames,
)
from streamclf.feed.subscriber import format_message


def _frames(topic: str, payload: dict) -> list[bytes]:
    return [topic.encode(), msgpack.packb(payload)]


def _payload(message) -> dict:
    return msgpack.unpackb(message.to_frames()[1])


class TestRoundTrip:
    """to_frames() then decode_frames() gives back an equal message, for every kind."""

    @pytest.mark.parametrize("message", [
        genre_message(),
        genre_message(probs=[0.1, 0.2, 0.3, 0.4], candidates=[["rock", 0.2], ["pop", 0.1]],
                      genre="unknown"),
        genre_message(genre="silence", silence=True, level_dbfs=-80.0, seq=12345),
        change_message(),
        change_message(previous=""),
        status_message(final=True),
        status_message(alarms=["silence"], momentary_lufs=-70.5, short_term_lufs=-31.0,
                       integrated_lufs=-23.4, loudness_range_lu=6.1, true_peak_dbtp=-1.5),
        alarm_message(),
        alarm_message(alarm="input", active=False, value=2.5, threshold=2.0, detail="running"),
    ])
    def test_round_trip(self, message):
        frames = message.to_frames()
        assert frames[0] == message.topic.encode()
        assert decode_frames(frames) == message
        assert type(message).from_frames(frames) == message

    def test_topics(self):
        assert genre_message(stream="a-1").topic == "genre.a-1"
        assert change_message().topic == "change.main"
        assert status_message().topic == "status.main"

    def test_version_and_optional_fields_on_the_wire(self):
        payload = _payload(genre_message())
        assert payload["v"] == VERSION == 1
        assert "probs" not in payload and "candidates" not in payload

    def test_from_frames_checks_the_kind(self):
        with pytest.raises(MessageError, match="expected a change message"):
            ChangeMessage.from_frames(genre_message().to_frames())

    def test_unknown_keys_are_ignored(self):
        payload = _payload(change_message()) | {"added_in_v1_1": [1, 2]}
        assert decode_frames(_frames("change.main", payload)) == change_message()

    def test_json_dict_has_no_non_finite_floats(self):
        message = genre_message(latency_ms=math.nan, level_dbfs=-math.inf)
        data = message.to_dict()
        assert (data["topic"], data["latency_ms"], data["level_dbfs"]) == ("genre.main", None, None)
        json.dumps(data, allow_nan=False)

    def test_message_error_is_a_feed_error(self):
        assert issubclass(MessageError, FeedError)


class TestMalformed:
    """Each malformation is a MessageError with a reason, never another exception."""

    @pytest.mark.parametrize(("frames", "reason"), [
        ([b"genre.main"], "expected 2 frames"),
        (genre_message().to_frames() + [b"x"], "expected 2 frames"),
        ([b"bogus.main", b"\x80"], "unknown topic"),
        ([b"genre", b"\x80"], "unknown topic"),
        ([b"genre.a b", b"\x80"], "unknown topic"),
        ([b"genre.main", genre_message().to_frames()[1][:-3]], "undecodable"),
        ([b"genre.main", b"\xc1"], "undecodable"),
        ([b"genre.main", msgpack.packb([1, 2])], "not a map"),
        ([b"genre.main", b"\x00" * (MAX_PAYLOAD_BYTES + 1)], "oversized"),
        ([b"g" * 1000, b"\x80"], "oversized"),
    ])
    def test_frames(self, frames, reason):
        with pytest.raises(MessageError, match=reason):
            decode_frames(frames)

    @pytest.mark.parametrize(("change", "reason"), [
        ({"v": 2}, "unsupported feed version 2"),
        ({"v": "1"}, "unsupported feed version"),
        ({"stream": "other"}, "bad stream"),
        ({"seq": -1}, "bad stream 'main' or seq -1"),
        ({"seq": 1.5}, "field 'seq': expected int"),
        ({"confidence": "high"}, "field 'confidence': expected float"),
        ({"confidence": True}, "field 'confidence'"),
        ({"genre": 3}, "field 'genre': expected str"),
        ({"genre": "x" * 1000}, "field 'genre'"),
        ({"previous": None}, "field 'previous'"),
    ])
    def test_fields(self, change, reason):
        payload = _payload(change_message()) | change
        with pytest.raises(MessageError, match=reason):
            decode_frames(_frames("change.main", payload))

    def test_missing_field(self):
        payload = _payload(status_message())
        del payload["labels"]
        with pytest.raises(MessageError, match="missing field 'labels'"):
            decode_frames(_frames("status.main", payload))

    @pytest.mark.parametrize("top", [[["rock"]], [["rock", 0.5, 1]], [[1, 0.5]], "rock", [[]]])
    def test_bad_tag_scores(self, top):
        payload = _payload(genre_message()) | {"top": top}
        with pytest.raises(MessageError, match="field 'top'"):
            decode_frames(_frames("genre.main", payload))


# -- fuzzing ----------------------------------------------------------------------------------

KEYS = ["v", "stream", "seq", "t0", "t1", "wall", "genre", "top", "labels", "final", "probs",
        "confidence", "candidates", "xruns"]
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                   st.text(max_size=8), st.binary(max_size=8), st.just("main"), st.just(1))
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(
    st.sampled_from(KEYS), inner, max_size=4)), max_leaves=10)
TOPICS = st.one_of(st.binary(max_size=20), st.sampled_from(
    [b"genre.main", b"change.main", b"status.main", b"genre.", b".main", b"genre.main.x"]))


def _decode_or_message_error(frames) -> None:
    try:
        message = decode_frames(frames)
    except MessageError:
        return
    assert_round_trips(message)


class TestFuzz:
    """Random frames and random payload maps: a message or a MessageError, never another error."""

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=4))
    def test_random_frames(self, frames):
        _decode_or_message_error(frames)

    @settings(max_examples=300, deadline=None)
    @given(TOPICS, st.binary(max_size=200))
    def test_random_payload_bytes(self, topic, payload):
        _decode_or_message_error([topic, payload])

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from([genre_message(), change_message(), status_message()]),
           st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4))
    def test_mutated_valid_payloads(self, message, changes):
        payload = _payload(message) | changes
        _decode_or_message_error([message.topic.encode(),
                                  msgpack.packb(payload, use_bin_type=True)])

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def test_truncated_and_spliced(self, noise):
        good = genre_message(probs=[0.5] * 50).to_frames()[1]
        for cut in (0, 1, len(good) // 2, len(good) - 1):
            _decode_or_message_error([b"genre.main", good[:cut] + noise])


def test_status_carries_labels():
    message = StatusMessage.from_frames(status_message().to_frames())
    assert message.labels == ["rock", "pop", "jazz", "guitar"]
    assert isinstance(GenreMessage.from_frames(genre_message().to_frames()).top[0], list)


def test_alarm_reads_as_one_line():
    """`streamclf subscribe` shows an alarm's start and end, its value and its limit."""
    assert format_message(alarm_message()).endswith(
        "alarm loudness START (above target): -14.2 (limit -23.0)")
    assert "alarm silence end: -inf (limit -60.0)" in format_message(
        alarm_message(alarm="silence", active=False, value=-math.inf, threshold=-60.0, detail=""))
