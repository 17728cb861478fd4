"""Each output against the real receiving program: Mosquitto, a python-osc UDP server, Debian's
Liquidsoap; and the daemon end to end with outputs configured."""

from __future__ import annotations

import json
import queue
import time

import pytest
from chain_helpers import Liquidsoap, Mosquitto, MqttListener, OscServer
from e2e_helpers import CLIP, run_cli
from feed_helpers import LABELS, change_message, genre_message, status_message

from streamclf.config import OutputConfig
from streamclf.feed.schema import TrackMessage
from streamclf.outputs import Outputs


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    mosquitto = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def outputs():
    """Outputs built from configs by the test; all closed at the end."""
    made: list[Outputs] = []

    def build(*configs: OutputConfig) -> Outputs:
        made.append(Outputs(configs))
        made[-1].start()
        return made[-1]

    yield build
    for out in made:
        out.close(2.0)


def wait_sent(out: Outputs, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(w.sent for w in out.workers) < count:
        assert time.monotonic() < deadline, out.health()
        time.sleep(0.01)


class TestMqtt:
    """The current genre per stream is retained; changes and status are plain events."""

    def test_a_late_subscriber_gets_the_state_at_once_and_changes_as_they_come(self, broker,
                                                                               outputs):
        out = outputs(OutputConfig(kind="mqtt", port=broker.port, topic_prefix="radio", qos=1))
        out.offer(genre_message(genre="rock", confidence=0.8))
        out.offer(change_message(genre="rock", previous="", confidence=0.8))
        out.offer(status_message())
        wait_sent(out, 3)
        listener = MqttListener(broker.port, "radio/#")
        try:
            topic, state, retained = listener.next()
            assert (topic, state["genre"], state["confidence"], retained) == (
                "radio/main/state", "rock", 0.8, True)
            assert state["topic"] == "genre.main" and state["v"] == 1
            with pytest.raises(queue.Empty):  # the change and status were events, not kept
                listener.next(timeout_s=0.5)
            out.offer(change_message(genre="jazz", previous="rock"))
            topic, change, retained = listener.next()
            assert (topic, change["genre"], change["previous"], retained) == (
                "radio/main/change", "jazz", "rock", False)
        finally:
            listener.close()
        wait_sent(out, 4)  # the broker may deliver before the worker counts the message sent
        assert out.health() == [["mqtt", "connected", 4, 0, 0]]


class TestOsc:
    """Genre string, confidence and one float per family, as UDP datagrams a real server reads."""

    def test_genre_confidence_and_one_float_per_family(self, outputs):
        server = OscServer()
        try:
            out = outputs(OutputConfig(kind="osc", port=server.port, address_prefix="/clf"))
            out.offer(status_message(stream="deck-a"))  # labels and genres of the stream
            out.offer(genre_message(stream="deck-a", genre="jazz", confidence=0.5,
                                    probs=[0.25, 0.125, 0.5, 0.75]))
            got = dict(server.received(until="/clf/deck-a/genre/jazz"))
            assert got == {"/clf/deck-a/genre": ("jazz",), "/clf/deck-a/confidence": (0.5,),
                           "/clf/deck-a/genre/rock": (0.25,), "/clf/deck-a/genre/pop": (0.125,),
                           "/clf/deck-a/genre/jazz": (0.5,)}
            assert "guitar" in LABELS  # a tag that is no genre family: never sent
        finally:
            server.close()


@pytest.fixture(scope="module")
def liquidsoap(tmp_path_factory):
    program = Liquidsoap(tmp_path_factory.mktemp("liquidsoap"))
    yield program
    program.stop()


class TestLiquidsoap:
    """Changes become `insert` commands that a real Liquidsoap applies as stream metadata."""

    def test_changes_arrive_as_metadata_over_telnet_and_the_unix_socket(self, liquidsoap,
                                                                        outputs):
        out = outputs(
            OutputConfig(kind="liquidsoap", id="telnet", port=liquidsoap.port),
            OutputConfig(kind="liquidsoap", id="unix", socket_path=str(liquidsoap.socket_path),
                         streams=("studio",)))
        out.offer(genre_message(genre="pop"))  # a window, no change: nothing to insert
        out.offer(change_message(genre="rock", previous="", confidence=0.82))
        wait_sent(out, 2)
        assert liquidsoap.recorded(1) == ["rock|0.82"]
        out.offer(change_message(stream="studio", genre='r"b', confidence=0.5))
        assert liquidsoap.recorded(2) == ["rock|0.82", 'r"b|0.50']
        assert [h[3] for h in out.health()] == [0, 0]  # no failures

    def test_a_new_track_gets_the_genre_again(self, liquidsoap, outputs):
        """A track start: its first window's genre goes in even when unchanged (Liquidsoap's
        new track drops the old metadata), once even when that window also changed it."""
        out = outputs(OutputConfig(kind="liquidsoap", port=liquidsoap.port, streams=("night",)))
        already = len(liquidsoap.recorded(0))
        track_start = TrackMessage(stream="night", event="start", wall=1.7e9, t=6.5, title="",
                                   source="audio")
        messages = [
            change_message(stream="night", t1=5.0, genre="jazz", confidence=0.7),
            genre_message(stream="night", t1=6.0, genre="jazz"),  # no change, no new track
            track_start,
            genre_message(stream="night", t1=7.0, genre="jazz", confidence=0.66),
            genre_message(stream="night", t1=8.0, genre="jazz"),
            track_start,
            genre_message(stream="night", t1=9.0, genre="pop", confidence=0.4),
            change_message(stream="night", t1=9.0, genre="pop", confidence=0.4),  # same window
            change_message(stream="night", t1=10.0, genre="blues", confidence=0.5)]
        for sent, message in enumerate(messages, start=1):
            out.offer(message)
            wait_sent(out, sent)
            time.sleep(0.2)  # Liquidsoap keeps one insert per frame: a duplicate would show
        assert liquidsoap.recorded(already + 4)[already:] == [
            "jazz|0.70", "jazz|0.66", "pop|0.40", "blues|0.50"]
        time.sleep(0.5)  # nothing more arrives
        assert len(liquidsoap.recorded(0)) == already + 4


def test_the_daemon_publishes_to_a_real_broker(tmp_path, broker):
    """`listen` on the bundled clip with an MQTT output: the retained state is the last window's
    genre, and the final status reports the output connected, with no failures or drops."""
    config = tmp_path / "mqtt.toml"
    config.write_text(f'[[outputs]]\nkind = "mqtt"\nport = {broker.port}\n'
                      'topic_prefix = "e2e"\n')
    proc = run_cli("listen", "--config", str(config), "--file", str(CLIP), "--fast",
                   "--no-publish", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    windows = [r for r in records if r["topic"] == "genre.main"]
    statuses = [r for r in records if r["topic"] == "status.main"]
    assert windows and statuses[-1]["final"]
    name, state, _sent, failures, dropped = statuses[-1]["outputs"][0]
    assert (name, state, failures, dropped) == ("mqtt", "connected", 0, 0)
    listener = MqttListener(broker.port, "e2e/main/state")
    try:
        _, retained, _ = listener.next()
    finally:
        listener.close()
    assert retained == windows[-1]
