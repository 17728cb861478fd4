"""`classify`'s read-ahead: the reader thread in front of the engine."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamclf.classify import read_ahead
from streamclf.errors import AudioInputError


def _source(n: int, *, fail_at: int | None = None, closed: threading.Event | None = None):
    try:
        for i in range(n):
            if i == fail_at:
                msg = f"bad block at {i}"
                raise AudioInputError(msg)
            yield i
    finally:
        if closed is not None:
            closed.set()


class TestReadAhead:
    """The caller sees exactly what the source gives, in order, and its error where it was."""

    @given(n=st.integers(0, 40), depth=st.integers(1, 6))
    @settings(max_examples=30, deadline=None)
    def test_same_items_in_order(self, n: int, depth: int) -> None:
        assert list(read_ahead(_source(n), depth=depth)) == list(range(n))

    def test_error_after_the_items_before_it(self) -> None:
        got = []
        with pytest.raises(AudioInputError, match="bad block at 3"):
            got.extend(read_ahead(_source(10, fail_at=3), depth=2))
        assert got == [0, 1, 2]

    def test_a_caller_that_stops_early_stops_the_reader_and_closes_the_source(self) -> None:
        closed = threading.Event()
        ahead = read_ahead(_source(1000, closed=closed), depth=2)
        assert next(ahead) == 0
        ahead.close()  # the reader is blocked on a full queue: it must notice and leave
        assert closed.is_set()
        assert not any(t.name == "classify-reader" for t in threading.enumerate())
