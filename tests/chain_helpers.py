"""The real programs of a station's chain for the tests: Mosquitto, Liquidsoap, an OSC
server, Icecast with a real source client.

Each is started on a free loopback port with a config written here, and stopped by its own pid.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from e2e_helpers import free_tcp_port
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import ThreadingOSCUDPServer

LIQUIDSOAP_START_S = 120  # it type-checks its standard library first: ~40 s on a loaded machine


def start(args: list[str], log: Path) -> subprocess.Popen:
    """Start a program with its output in a log file (a pipe nobody reads would fill up)."""
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text(errors="replace")[-2000:]
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}: {out}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{proc.args[0]} did not listen on {port} within {timeout_s} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a program we started, by its own pid."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Mosquitto:
    """A Mosquitto broker on 127.0.0.1:port (anonymous, no persistence)."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            pytest.fail("mosquitto is not installed (scripts/setup.sh dev installs it)")
        self.port = port or free_tcp_port()
        conf = tmp / f"mosquitto-{self.port}.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\nlog_dest stdout\n")
        log = tmp / f"mosquitto-{self.port}.log"
        self.proc = start([binary, "-c", str(conf)], log)
        wait_for_port(self.port, self.proc, log, 10)

    def stop(self) -> None:
        stop(self.proc)


class MqttListener:
    """A paho subscriber that queues (topic, JSON payload, retained) for the test to read."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: queue.Queue = queue.Queue()
        subscribed = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda _c, _u, m: self.messages.put(
            (m.topic, json.loads(m.payload), bool(m.retain)))
        self.client.on_subscribe = lambda *_: subscribed.put(True)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic)
        subscribed.get(timeout=10)

    def next(self, timeout_s: float = 10.0) -> tuple[str, dict, bool]:
        return self.messages.get(timeout=timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class OscServer:
    """A real python-osc UDP server on loopback that queues every (address, *args) it gets."""

    def __init__(self) -> None:
        self.messages: queue.Queue = queue.Queue()
        dispatcher = Dispatcher()
        dispatcher.set_default_handler(lambda address, *args: self.messages.put((address, args)))
        self.server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def received(self, until: str, timeout_s: float = 10.0) -> list[tuple[str, tuple]]:
        """Everything received up to and including the first message at address `until`."""
        got = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                got.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
            if got[-1][0] == until:
                return got
        pytest.fail(f"no OSC message at {until} in {timeout_s} s; got {got[:5]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


LIQUIDSOAP_SCRIPT = """\
settings.init.allow_root.set(true)
settings.log.stdout.set(true)
settings.log.file.set(false)
settings.server.telnet.set(true)
settings.server.telnet.bind_addr.set("127.0.0.1")
settings.server.telnet.port.set({port})
settings.server.socket.set(true)
settings.server.socket.path.set("{socket}")
s = server.insert_metadata(id="streamclf", sine())
def record(m) =
  file.write(append=true, data=m["genre"] ^ "|" ^ m["genre_confidence"] ^ "\\n", "{record}")
end
s = source.on_metadata(s, record)
output.dummy(fallible=true, s)
"""


class Liquidsoap:
    """Debian's liquidsoap running a script that appends each genre metadata it gets to a file."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("liquidsoap")
        if binary is None:
            pytest.fail("liquidsoap is not installed (scripts/setup.sh dev installs it)")
        self.port = free_tcp_port()
        self.socket_path = tmp / "liquidsoap.sock"
        self.record = tmp / "metadata.txt"
        script = tmp / "record.liq"
        script.write_text(LIQUIDSOAP_SCRIPT.format(port=self.port, socket=self.socket_path,
                                                   record=self.record))
        log = tmp / "liquidsoap.log"
        self.proc = start([binary, str(script)], log)
        wait_for_port(self.port, self.proc, log, LIQUIDSOAP_START_S)

    def recorded(self, count: int, timeout_s: float = 10.0) -> list[str]:
        """The first `count` metadata lines Liquidsoap recorded ("genre|confidence")."""
        deadline = time.monotonic() + timeout_s
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = self.record.read_text().splitlines() if self.record.exists() else []
            if len(lines) >= count:
                return lines
            time.sleep(0.05)
        pytest.fail(f"Liquidsoap recorded {lines} within {timeout_s} s, expected {count} lines")

    def stop(self) -> None:
        stop(self.proc)


ICECAST_XML = """\
<icecast>
  <limits><sources>2</sources><burst-size>0</burst-size></limits>
  <authentication>
    <source-password>{password}</source-password>
    <admin-user>admin</admin-user>
    <admin-password>{password}</admin-password>
  </authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>0</fileserve>
  <paths><logdir>{logdir}</logdir><webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot></paths>
  <logging><accesslog>-</accesslog><errorlog>-</errorlog><loglevel>3</loglevel></logging>
  <security><chroot>0</chroot>{owner}</security>
</icecast>
"""


class Icecast:
    """Debian's icecast2 on loopback, fed `audio` in a loop by ffmpeg as a real MP3 source client
    on mount /live; `set_title` changes the title the way source clients do for MP3 (the admin
    metadata request)."""

    PASSWORD = "streamclf-test"

    def __init__(self, tmp: Path, audio: Path) -> None:
        binary = shutil.which("icecast2")
        if binary is None:
            pytest.fail("icecast2 is not installed (scripts/setup.sh dev installs it)")
        self.port = free_tcp_port()
        tmp.chmod(0o777)  # icecast drops root for its own user and writes its logs here
        owner = ("<changeowner><user>icecast2</user><group>icecast</group></changeowner>"
                 if os.geteuid() == 0 else "")
        conf = tmp / "icecast.xml"
        conf.write_text(ICECAST_XML.format(password=self.PASSWORD, port=self.port, logdir=tmp,
                                           owner=owner))
        log = tmp / "icecast.log"
        self.proc = start([binary, "-c", str(conf)], log)
        wait_for_port(self.port, self.proc, log, 10)
        self.url = f"http://127.0.0.1:{self.port}/live"
        source = (f"icecast://source:{self.PASSWORD}@127.0.0.1:{self.port}/live")
        self.source = start(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
                             "-stream_loop", "-1", "-i", str(audio), "-c:a", "libmp3lame",
                             "-b:a", "128k", "-content_type", "audio/mpeg", "-f", "mp3", source],
                            tmp / "source.log")
        self._wait_for_mount(tmp / "source.log")

    def _wait_for_mount(self, log: Path, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.source.poll() is not None:
                pytest.fail(f"the ffmpeg source client exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"no stream on {self.url} within {timeout_s} s")

    def set_title(self, title: str) -> None:
        query = urllib.parse.urlencode({"mount": "/live", "mode": "updinfo", "song": title})
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/admin/metadata?{query}")
        token = base64.b64encode(f"admin:{self.PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert b"Metadata update successful" in response.read()

    def stop(self) -> None:
        stop(self.source)
        stop(self.proc)
