"""The feed on real ZeroMQ sockets (loopback tcp and ipc): publisher, subscriber, CURVE, limits."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.auth
from feed_helpers import change_message, genre_message, status_message, wait_joined

from streamclf.config import CurveConfig, FeedConfig
from streamclf.errors import FeedError
from streamclf.feed.publisher import Publisher, is_loopback_endpoint
from streamclf.feed.schema import ChangeMessage, GenreMessage, Sequencer, StatusMessage
from streamclf.feed.subscriber import CurveClient, Subscriber, run_subscribe

pytestmark = pytest.mark.timeout(60)
ANY_PORT = "tcp://127.0.0.1:*"


@pytest.fixture
def publisher():
    with Publisher(FeedConfig(endpoint=ANY_PORT)) as pub:
        yield pub


def _join(pub: Publisher, sub: Subscriber) -> None:
    wait_joined(lambda: pub.publish(genre_message(stream="probe")), sub)


def _received(sub: Subscriber, timeout_s: float = 0.5) -> list:
    return list(sub.messages(timeout_s=timeout_s))


class TestRoundTrip:
    """Every message kind arrives intact, with gap-free seq per (kind, stream)."""

    @pytest.mark.parametrize("transport", ["tcp", "ipc"])
    def test_all_kinds(self, tmp_path, transport):
        endpoint = ANY_PORT if transport == "tcp" else f"ipc://{tmp_path}/feed.sock"
        with Publisher(FeedConfig(endpoint=endpoint)) as pub, \
                Subscriber(pub.endpoint, ("genre.", "change.", "status.main")) as sub:
            _join(pub, sub)
            sent = [genre_message(), change_message(), status_message(final=True),
                    genre_message(probs=[0.25] * 4, candidates=[["rock", 0.2]], genre="unknown"),
                    genre_message(stream="b"), change_message()]
            sequence = Sequencer()
            for message in sent:
                assert pub.publish(sequence.stamp(message))
            got = _received(sub)
        assert [type(m) for m in got] == [GenreMessage, ChangeMessage, StatusMessage,
                                          GenreMessage, GenreMessage, ChangeMessage]
        assert [(m.topic, m.seq) for m in got] == [
            ("genre.main", 0), ("change.main", 0), ("status.main", 0), ("genre.main", 1),
            ("genre.b", 0), ("change.main", 1)]
        assert got[2] == sent[2]
        assert got[3].candidates == [["rock", 0.2]]
        assert (sub.malformed, sub.lost, pub.sent, pub.drops) == (0, 0, pub.sent, 0)

    def test_topic_prefix_filter(self, publisher):
        with Subscriber(publisher.endpoint, ("change.", "genre.b")) as sub:
            wait_joined(lambda: publisher.publish(change_message(stream="probe")), sub)
            for stream in ("a", "b", "bb"):
                publisher.publish(genre_message(stream=stream))
                publisher.publish(status_message(stream=stream))
                publisher.publish(change_message(stream=stream))
            topics = [m.topic for m in _received(sub)]
        # ZeroMQ matches prefixes: "genre.b" also selects "genre.bb" (docs/feed.md).
        assert topics == ["change.a", "genre.b", "change.b", "genre.bb", "change.bb"]


class TestNeverBlocks:
    """A subscriber that never reads costs it messages, not the publisher time."""

    def test_stuck_subscriber(self):
        n_messages = 30_000
        with Publisher(FeedConfig(endpoint=ANY_PORT, send_hwm=10)) as pub, \
                Subscriber(pub.endpoint) as sub:
            _join(pub, sub)
            started = time.monotonic()
            sequence = Sequencer()
            results = [pub.publish(sequence.stamp(genre_message())) for _ in range(n_messages)]
            elapsed_s = time.monotonic() - started
            got = _received(sub, timeout_s=1.0)
        assert all(results) and pub.drops == 0
        assert elapsed_s < 30  # ~1 s here; only "did not block", not a speed target
        assert 0 < len(got) < n_messages
        assert sub.lost == got[-1].seq - got[0].seq + 1 - len(got) > 0


class TestSecurity:
    """Non-loopback binds need CURVE; CURVE lets in only clients with the right keys."""

    def test_insecure_remote_bind_refused(self):
        with pytest.raises(FeedError, match="refusing to publish unencrypted on tcp://0.0.0.0"):
            Publisher(FeedConfig(endpoint="tcp://0.0.0.0:*"))

    def test_insecure_remote_bind_allowed_when_asked(self):
        with Publisher(FeedConfig(endpoint="tcp://0.0.0.0:*", allow_insecure_remote=True)) as pub:
            assert pub.endpoint.startswith("tcp://0.0.0.0:")

    @pytest.mark.parametrize(("endpoint", "loopback"), [
        ("tcp://127.0.0.1:5556", True), ("tcp://127.3.2.1:1", True), ("tcp://localhost:5556", True),
        ("tcp://[::1]:5556", True), ("ipc:///run/x.sock", True), ("tcp://*:5556", False),
        ("tcp://0.0.0.0:5556", False), ("tcp://192.168.1.4:5556", False),
        ("tcp://eth0:5556", False), ("tcp://example.org:5556", False)])
    def test_loopback_detection(self, endpoint, loopback):
        assert is_loopback_endpoint(endpoint) is loopback

    def test_busy_port(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(FeedError, match=f":{port}: address already in use$"):
                Publisher(FeedConfig(endpoint=f"tcp://127.0.0.1:{port}"))

    @pytest.fixture
    def keys(self, tmp_path) -> dict[str, Path]:
        server_dir, clients_dir, other_dir = (tmp_path / d for d in ("server", "clients", "other"))
        for d in (server_dir, clients_dir, other_dir):
            d.mkdir()
        _, server_secret = zmq.auth.create_certificates(server_dir, "server")
        client_public, client_secret = zmq.auth.create_certificates(tmp_path, "client")
        (clients_dir / "client.key").write_bytes(Path(client_public).read_bytes())
        _, intruder_secret = zmq.auth.create_certificates(other_dir, "intruder")
        return {"server_secret": Path(server_secret), "server_public": server_dir / "server.key",
                "clients": clients_dir, "client_secret": Path(client_secret),
                "intruder_secret": Path(intruder_secret)}

    def _curve_publisher(self, keys, *, authorized: bool) -> Publisher:
        curve = CurveConfig(enabled=True, server_secret_key_file=str(keys["server_secret"]),
                            authorized_clients_dir=str(keys["clients"]) if authorized else "")
        return Publisher(FeedConfig(endpoint="tcp://0.0.0.0:*", curve=curve))

    def test_curve_round_trip_and_strangers_get_nothing(self, keys):
        with self._curve_publisher(keys, authorized=True) as pub:
            endpoint = pub.endpoint.replace("0.0.0.0", "127.0.0.1")
            good = Subscriber(endpoint, curve=CurveClient(str(keys["server_public"]),
                                                          str(keys["client_secret"])))
            plain = Subscriber(endpoint)
            intruder = Subscriber(endpoint, curve=CurveClient(str(keys["server_public"]),
                                                              str(keys["intruder_secret"])))
            throwaway = Subscriber(endpoint, curve=CurveClient(str(keys["server_public"])))
            try:
                _join(pub, good)
                for _ in range(20):
                    pub.publish(genre_message())
                    time.sleep(0.01)
                assert len(_received(good)) == 20
                for stranger in (plain, intruder, throwaway):
                    assert _received(stranger, timeout_s=0.2) == []
            finally:
                for sub in (good, plain, intruder, throwaway):
                    sub.close()

    def test_curve_without_client_list_accepts_any_key(self, keys):
        with self._curve_publisher(keys, authorized=False) as pub:
            endpoint = pub.endpoint.replace("0.0.0.0", "127.0.0.1")
            with Subscriber(endpoint, curve=CurveClient(str(keys["server_public"]))) as sub, \
                    Subscriber(endpoint) as plain:
                _join(pub, sub)
                pub.publish(change_message())
                assert [m.topic for m in _received(sub)] == ["change.main"]
                assert _received(plain, timeout_s=0.2) == []

    def test_missing_key_file(self, tmp_path):
        curve = CurveConfig(enabled=True, server_secret_key_file=str(tmp_path / "none"))
        with pytest.raises(FeedError, match="server_secret_key_file: cannot load a CURVE key"):
            Publisher(FeedConfig(curve=curve, endpoint=ANY_PORT))


class TestHostilePublisher:
    """Oversized and malformed messages cannot crash or bloat the subscriber."""

    @pytest.fixture
    def raw_pub(self):
        context = zmq.Context()
        pub = context.socket(zmq.PUB)
        pub.linger = 0
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        yield pub, f"tcp://127.0.0.1:{port}"
        pub.close()
        context.term()

    def test_maxmsgsize_honoured(self, raw_pub):
        """A frame over the limit never reaches the client: libzmq cuts that publisher off (a
        protocol error, no reconnect), while a client with the default limit gets it."""
        pub, endpoint = raw_pub
        big = genre_message(probs=[0.5] * 500)
        assert len(big.to_frames()[1]) > 2000
        with Subscriber(endpoint, max_message_bytes=2000) as limited, Subscriber(endpoint) as full:
            for sub in (limited, full):
                wait_joined(lambda: pub.send_multipart(genre_message().to_frames()), sub)
            _received(limited, timeout_s=0.3)  # the probes sent while `full` joined
            pub.send_multipart(big.to_frames())
            pub.send_multipart(change_message().to_frames())
            assert [m.topic for m in _received(full)] == ["genre.main", "change.main"]
            assert _received(limited, timeout_s=0.5) == []
            assert limited.malformed == 0  # nothing reached the decoder

    def test_malformed_counted_then_valid_delivered(self, raw_pub):
        pub, endpoint = raw_pub
        with Subscriber(endpoint) as sub:
            wait_joined(lambda: pub.send_multipart(status_message().to_frames()), sub)
            pub.send(b"genre.main")
            pub.send_multipart([b"genre.main", b"\xc1"])
            pub.send_multipart([b"genre.main", b"\x80", b"x", b"y", b"z"])
            pub.send_multipart([b"genre.main", msgpack.packb({"v": 1, "stream": "main"})])
            pub.send_multipart(change_message(seq=5).to_frames())
            got = _received(sub)
            assert [m.topic for m in got] == ["change.main"]
            assert sub.malformed == 4


class TestRunSubscribe:
    """`streamclf subscribe` prints one line (or one JSON object) per message."""

    @staticmethod
    def _run(publisher: Publisher, as_json: bool) -> list[str]:
        """run_subscribe for 4 messages while a thread keeps publishing (it may join late)."""
        done = threading.Event()

        def feed() -> None:
            while not done.is_set():
                publisher.publish(genre_message(latency_ms=float("nan")))
                publisher.publish(change_message())
                time.sleep(0.02)

        out = io.StringIO()
        thread = threading.Thread(target=feed)
        thread.start()
        try:
            assert run_subscribe(publisher.endpoint, "", 4, as_json, out, timeout_s=10) == 0
        finally:
            done.set()
            thread.join()
        return out.getvalue().splitlines()

    def test_lines(self, publisher):
        lines = self._run(publisher, as_json=False)
        assert len(lines) == 4
        assert any("rock" in line and "raw pop" in line and "[rock 0.70, guitar 0.50]" in line
                   for line in lines)
        assert any("change rock -> jazz (0.55)" in line for line in lines)

    def test_json(self, publisher):
        records = [json.loads(line) for line in self._run(publisher, as_json=True)]
        assert len(records) == 4
        assert {r["topic"] for r in records} == {"genre.main", "change.main"}
        assert all(r["latency_ms"] is None for r in records if r["topic"] == "genre.main")

    def test_timeout_is_a_feed_error(self, publisher):
        with pytest.raises(FeedError, match="no message from"):
            run_subscribe(publisher.endpoint, "status.", 1, False, io.StringIO(), timeout_s=0.3)
