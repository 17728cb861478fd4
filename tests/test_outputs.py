"""Outputs: the `[[outputs]]` config, the pure helpers of each sink, and the worker's contract
(never waits, bounded queue, back-off, counted failures) against real sockets."""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import replace

import pytest
from chain_helpers import Mosquitto, MqttListener
from e2e_helpers import assert_one_line_error, free_tcp_port, run_cli
from feed_helpers import assert_round_trips, change_message, genre_message, status_message

from streamclf.config import OutputConfig, config_with_overrides, default_config, parse_config
from streamclf.errors import ConfigError
from streamclf.outputs import make_sink
from streamclf.outputs.liquidsoap import LiquidsoapSink, insert_command, quote
from streamclf.outputs.mqtt import MqttSink
from streamclf.outputs.osc import family_scores, osc_part
from streamclf.outputs.rds import RdsSink, on_air_label, pty_command, radiotext_commands
from streamclf.outputs.worker import OutputWorker


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


class TestOutputsConfig:
    """`[[outputs]]` tables load into OutputConfig; every mistake is one line naming the key."""

    def test_no_outputs_by_default(self):
        assert default_config().outputs == ()

    def test_tables_load_with_each_kinds_usual_port(self):
        cfg = parse_config('[[outputs]]\nkind = "mqtt"\n[[outputs]]\nkind = "osc"\n'
                           '[[outputs]]\nkind = "liquidsoap"\nid = "air"\nport = 1235\n')
        assert [(o.name, o.target_port) for o in cfg.outputs] == [
            ("mqtt", 1883), ("osc", 9000), ("air", 1235)]

    def test_outputs_survive_command_line_overrides(self):
        cfg = parse_config('[[outputs]]\nkind = "osc"\nstreams = ["main"]\n')
        assert config_with_overrides(cfg, hop_s=0.5).outputs == cfg.outputs

    @pytest.mark.parametrize(("toml", "error"), [
        ('[[outputs]]\nkind = "fm"',
         'outputs[0].kind: expected "mqtt" | "osc" | "liquidsoap" | "rds"'),
        ('[[outputs]]\nknd = "mqtt"', "outputs[0].knd: unknown key (did you mean 'kind'?)"),
        ('[outputs]\nkind = "mqtt"', "outputs: expected an array of tables ([[outputs]])"),
        ('[[outputs]]\nkind = "osc"\nqos = 1', 'outputs[0].qos: only applies to kind = "mqtt"'),
        ('[[outputs]]\nport = 70000', "outputs[0].port: must be 0 (the kind's usual)..65535"),
        ('[[outputs]]\nqos = 3', "outputs[0].qos: must be 0, 1 or 2, got 3"),
        ('[[outputs]]\ntopic_prefix = "a/#"', "outputs[0].topic_prefix: a non-empty MQTT topic"),
        ('[[outputs]]\nkind = "osc"\naddress_prefix = "x"', "outputs[0].address_prefix: an OSC"),
        ('[[outputs]]\nretry_initial_s = 5\nretry_max_s = 1', "outputs[0].retry_max_s: need"),
        ('[[outputs]]\nstreams = ["studio"]', "outputs[0].streams: no stream 'studio'"),
        ('[[outputs]]\n[[outputs]]', "outputs[1].id: duplicate output 'mqtt' (also outputs[0])"),
        ('[[outputs]]\nkind = "rds"', "outputs[0].pipe_path: is required for kind = \"rds\""),
        ('[[outputs]]\nkind = "rds"\npipe_path = "p"\npty_table = "us"',
         'outputs[0].pty_table: expected "rds" | "rbds"'),
    ])
    def test_bad_tables_are_one_line_errors(self, toml, error):
        with pytest.raises(ConfigError) as info:
            parse_config(toml, origin="x.toml")
        assert str(info.value).startswith(f"x.toml: {error}"), str(info.value)
        assert "\n" not in str(info.value)

    def test_serve_reports_a_bad_output_in_one_line(self, tmp_path):
        config = tmp_path / "bad.toml"
        config.write_text('[[outputs]]\nkind = "mqtt"\nqos = 5\n')
        line = assert_one_line_error(run_cli("serve", "--config", str(config)), 2)
        assert "outputs[0].qos: must be 0, 1 or 2" in line

    def test_a_missing_client_library_is_a_config_error(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)  # what an absent package does
        expected = (r"output 'mqtt' \(kind = \"mqtt\"\) needs the Python package paho-mqtt: "
                    r"pip install 'streamclf\[outputs\]'")
        with pytest.raises(ConfigError, match=expected):
            make_sink(OutputConfig(kind="mqtt"))


def test_status_with_outputs_health_round_trips():
    """The status field that reports the outputs decodes like every other field."""
    assert_round_trips(status_message(outputs=[["mqtt", "retrying", 3, 2, 0]]))


class TestSinkHelpers:
    """What each sink makes of a message, before any socket."""

    def test_liquidsoap_command_quotes_values(self):
        assert quote('r"b\\x') == '"r\\"b\\\\x"'
        line = insert_command("air", change_message(genre="jazz", confidence=0.554))
        assert line == b'air.insert genre="jazz",genre_confidence="0.55"\n'

    def test_osc_address_parts_avoid_reserved_characters(self):
        assert osc_part("hip-hop") == "hip-hop"
        assert osc_part("drum n/bass {x}") == "drum_n_bass__x_"

    def test_osc_families_from_probs_else_from_top(self):
        labels = ["rock", "guitar", "jazz"]
        with_probs = genre_message(probs=[0.7, 0.9, 0.1])
        assert family_scores(with_probs, labels, ["rock", "jazz"]) == {"rock": 0.7, "jazz": 0.1}
        top_only = genre_message(top=[["guitar", 0.9], ["rock", 0.7]])
        assert family_scores(top_only, labels, ["rock", "jazz"]) == {"rock": 0.7}


class TestOutputWorker:
    """The worker between the pipeline and a sink: offer() never waits; failures are retried
    with back-off and counted; what was queued while the target was down arrives later."""

    def test_a_target_that_never_answers_does_not_hold_up_offer(self):
        with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never replies
            port = silent.getsockname()[1]
            config = OutputConfig(kind="liquidsoap", port=port, queue_messages=10,
                                  retry_initial_s=0.05, retry_max_s=0.1)
            worker = OutputWorker(config, LiquidsoapSink(config))
            worker.start()
            worker.offer(change_message(genre="rock"))
            peer, _ = silent.accept()
            wait_until(lambda: peer.recv(4096))  # the command arrived; no reply will come
            for i in range(50):
                worker.offer(change_message(seq=i))
            assert worker.health() == ["liquidsoap", "connected", 0, 0, 41]  # 51 offered, 10 kept
            peer.close()  # the target goes away mid-command
            wait_until(lambda: worker.failures >= 1)
            assert worker.state == "retrying"
        worker.stop()
        worker.join(2)
        assert not worker.is_alive()

    def test_messages_queued_while_the_broker_is_down_arrive_once_it_is_up(self, tmp_path):
        port = free_tcp_port()
        config = OutputConfig(kind="mqtt", port=port, retry_initial_s=0.05, retry_max_s=0.2)
        worker = OutputWorker(config, MqttSink(config))
        worker.start()
        for stream in ("a", "b"):
            worker.offer(genre_message(stream=stream, genre=f"{stream}-genre"))
        wait_until(lambda: worker.failures >= 3)
        assert (worker.state, worker.sent) == ("retrying", 0)
        broker = Mosquitto(tmp_path, port)
        try:
            wait_until(lambda: worker.sent == 2)
            assert worker.state == "connected"
            listener = MqttListener(port, "streamclf/#")  # late: gets the retained states
            got = sorted((listener.next()[:2]) for _ in range(2))
            listener.close()
            assert [(t, m["genre"]) for t, m in got] == [
                ("streamclf/a/state", "a-genre"), ("streamclf/b/state", "b-genre")]
        finally:
            worker.stop()
            worker.join(2)
            broker.stop()


class TestRds:
    """Programme-type codes of both tables (talk for speech), RT+ genre tags, written as encoder
    commands to a real FIFO."""

    @pytest.mark.parametrize(("genre", "rds", "rbds"), [
        ("rock", 11, 5), ("pop", 10, 9), ("jazz", 24, 14), ("country", 25, 10),
        ("classical", 14, 15), ("hip-hop", 15, 26), ("folk", 28, None), ("talk", 9, 4),
        ("silence", None, None), ("unknown", None, None)])
    def test_pty_codes_of_both_tables(self, genre, rds, rbds):
        for table, code in (("rds", rds), ("rbds", rbds)):
            label = on_air_label(genre)
            line = None if label is None else pty_command(label, table)
            assert line == (None if code is None else f"PTY {code}\n".encode())

    @pytest.mark.parametrize(("genre", "content", "label"), [
        ("rock", None, "rock"), ("rock", "music", "rock"), ("rock", "music+speech", "rock"),
        ("rock", "speech", "talk"), ("unknown", "speech", "talk"), ("talk", "speech", "talk"),
        ("silence", "silence", None), ("unknown", "music", None)])
    def test_speech_is_talk_whatever_the_genre(self, genre, content, label):
        assert on_air_label(genre, content) == label

    def test_the_rt_plus_tag_spans_the_genre(self):
        lines = radiotext_commands("hip-hop", toggle=1).decode().splitlines()
        assert lines == ["RT Genre: hip-hop", "RTP 11,7,6,0,0,0", "RTPF 1,1"]
        text = lines[0].removeprefix("RT ")
        assert text[7 : 7 + 6 + 1] == "hip-hop"  # start 7, 6 characters after the first

    def test_changes_reach_an_encoder_that_opens_its_pipe_late(self, tmp_path):
        fifo = tmp_path / "rds.ctl"
        os.mkfifo(fifo)
        config = OutputConfig(kind="rds", pipe_path=str(fifo), pty_table="rbds",
                              retry_initial_s=0.05, retry_max_s=0.1)
        worker = OutputWorker(config, RdsSink(config))
        worker.start()
        worker.offer(genre_message(genre="jazz"))
        wait_until(lambda: worker.failures >= 2)  # no reader on the FIFO yet: ENXIO, retried
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            worker.offer(genre_message(genre="jazz"))  # no change: nothing more
            worker.offer(genre_message(genre="silence"))  # no code: the PTY stays as it is
            worker.offer(genre_message(genre="country"))
            assert read_until(reader, b"PTY 14\nPTY 10\n")
            assert worker.health()[1:3] == ["connected", 4]
        finally:
            worker.stop()
            worker.join(2)
            os.close(reader)

    def test_speech_and_rt_plus_reach_the_encoder(self, tmp_path):
        """With content detection's field: speech turns the PTY to talk and back; without it
        (plain genre messages) the genre alone decides."""
        fifo = tmp_path / "rds.ctl"
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        config = OutputConfig(kind="rds", pipe_path=str(fifo), radiotext=True)
        worker = OutputWorker(config, RdsSink(config))
        worker.start()
        try:
            worker.offer(genre_message(genre="rock"))
            worker.offer(replace(genre_message(genre="rock"), content="speech"))
            worker.offer(replace(genre_message(genre="rock"), content="music+speech"))
            assert read_until(reader, b"PTY 11\nRT Genre: rock\nRTP 11,7,3,0,0,0\nRTPF 1,1\n"
                                      b"PTY 9\nRT Genre: talk\nRTP 11,7,3,0,0,0\nRTPF 1,0\n"
                                      b"PTY 11\nRT Genre: rock\nRTP 11,7,3,0,0,0\nRTPF 1,1\n")
        finally:
            worker.stop()
            worker.join(2)
            os.close(reader)


def read_until(reader: int, expected: bytes) -> bool:
    """Read a FIFO until exactly `expected` came (False when something else did)."""
    received = bytearray()

    def read_more() -> bool:
        try:
            received.extend(os.read(reader, 4096))
        except BlockingIOError:
            pass
        return len(received) >= len(expected)

    wait_until(read_more)
    return bytes(received) == expected
