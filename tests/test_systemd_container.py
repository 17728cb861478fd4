"""The shipped units under a real systemd: a Debian 12 root booted with `systemd-nspawn -b`.

The root is set up as a user's fresh machine would be (the README's `scripts/run.sh`, then
docs/deploy.md's `scripts/install-service.sh`), and every check below runs `systemctl` and
`journalctl` inside it, on the unchanged unit files, with the bundled clip (or an HTTP stream on
the container's loopback) as the input. tests/container_helpers.py builds and caches the root.

Needs root (systemd-nspawn) and the packages systemd-container and debootstrap, which
`scripts/setup.sh dev` installs as root. Elsewhere it skips; as root with a tool missing it fails.
Measured here (docs/deploy.md section 10): a cold run (no cached root) 14.5 min, a warm one 4.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from container_helpers import (
    CHECKOUT_IN_CONTAINER,
    REPO,
    RUN_SH_LOG,
    Container,
    copy_checkout,
    missing_tools,
    ready_root,
)
from e2e_helpers import free_tcp_port

from streamclf.streams import STALL_S

pytestmark = pytest.mark.timeout(2400)

VENV = "/opt/streamclf/venv"
UNIT = "streamclf.service"
WATCHDOG_S = 10  # the unit's WatchdogSec=
RESTART_S = 5  # the unit's RestartSec=
SPAWN_SLACK_S = 2.0  # systemd's own scheduling and the 0.2 s polling, on a loaded 2-core machine
# The container shares the host's network: free host ports, so that a daemon or `listen` on the
# host (default tcp://127.0.0.1:5556) cannot collide with the one inside.
FEED_PORT = free_tcp_port()
STREAM_PORT = free_tcp_port()
USER = "listener"

CONFIG = """
[engine]
threads = 1
{engine}
[feed]
endpoint = "tcp://127.0.0.1:{port}"
status_interval_s = 1.0
[smoothing]
unknown_threshold = {unknown_threshold}
[[streams]]
id = "main"
{source}
"""


def _unit_setting(unit_text: str, key: str) -> int:
    return int(re.search(rf"^{key}=(\d+)$", unit_text, re.MULTILINE).group(1))


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """The booted container with the checkout under test installed as docs/deploy.md says."""
    if os.geteuid() != 0:
        pytest.skip("needs root: systemd-nspawn boots the container")
    missing = missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: scripts/setup.sh dev installs "
                    "systemd-container and debootstrap as root")  # fmt: skip
    work = tmp_path_factory.mktemp("container")
    log = work / "container.log"
    root = ready_root(log)
    checkout = work / "checkout"
    copy_checkout(checkout)
    container = Container(root, binds=(f"--bind={checkout}:{CHECKOUT_IN_CONTAINER}",), log=log)
    try:
        state = container.wait_booted()
        assert state in ("running", "degraded"), f"boot ended {state!r}"
        container.sh(f"cd {CHECKOUT_IN_CONTAINER} && ./scripts/install-service.sh", timeout_s=600)
        yield container
    finally:
        container.stop()


def show(box: Container, unit: str = UNIT, *, user: str | None = None) -> dict[str, str]:
    scope = "--user " if user else ""
    env = "XDG_RUNTIME_DIR=/run/user/$(id -u) " if user else ""
    out = box.sh(f"{env}systemctl {scope}show {unit}", user=user).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_show(box: Container, predicate, *, timeout_s: float, user: str | None = None) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        props = show(box, user=user)
        if predicate(props) or time.monotonic() > deadline:
            return props
        time.sleep(0.2)


def has_genre(props: dict) -> bool:
    return re.fullmatch(r"main: \S.* \d\.\d\d", props.get("StatusText", "")) is not None


def write_config(box: Container, *, path: str = "/etc/streamclf/streamclf.toml",
                 source: str | None = None, unknown_threshold: float = 0.35, engine: str = "",
                 user: str | None = None) -> None:
    clip = box.sh(f"{VENV}/bin/python -c 'from streamclf.audio.files import BUNDLED_CLIP; "
                  "print(BUNDLED_CLIP)'").stdout.strip()  # fmt: skip
    source = source or f'source = "file"\npath = "{clip}"\nloop = true\nrealtime = true'
    text = CONFIG.format(source=source, unknown_threshold=unknown_threshold, engine=engine,
                         port=FEED_PORT)
    box.sh(f"install -d -m 0755 $(dirname {path}) && cat > {path} <<'EOF'\n{text}\nEOF\n"
           f"chmod 0644 {path}", user=user)  # fmt: skip


def journal(box: Container, *args: str) -> list[dict]:
    out = box.sh(f"journalctl --no-pager -o json {' '.join(args)}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def daemon_events(box: Container, main_pid: str | None = None) -> list[dict]:
    """The daemon's JSON log lines as the journal holds them (one MESSAGE each)."""
    selector = f"_PID={main_pid}" if main_pid else f"_SYSTEMD_UNIT={UNIT}"
    events = []
    for entry in journal(box, selector):
        message = entry.get("MESSAGE", "")
        if isinstance(message, str) and message.startswith("{"):
            events.append(json.loads(message))
    return events


def subscribe(box: Container, *args: str) -> subprocess.Popen:
    """`streamclf subscribe --json` inside the container, in the background."""
    cmd = box.command(f"{VENV}/bin/streamclf subscribe --json "
                      f"--endpoint tcp://127.0.0.1:{FEED_PORT} {' '.join(args)}")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def records(proc: subprocess.Popen, timeout_s: float) -> list[dict]:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def restart_and_wait(box: Container) -> dict:
    box.sh(f"systemctl restart {UNIT}", timeout_s=120)
    props = wait_show(box, has_genre, timeout_s=60)
    assert has_genre(props), props
    return props


def seconds_until_restarted(box: Container, old_pid: str, limit_s: float) -> float:
    started = time.monotonic()
    props = wait_show(box, lambda p: p["MainPID"] not in ("0", old_pid), timeout_s=limit_s + 30)
    assert props["MainPID"] not in ("0", old_pid), props
    return time.monotonic() - started


class TestFreshMachine:
    """The README's set-up ran in a fresh Debian 12 root; the install used docs/deploy.md's
    script."""

    def test_readme_run_sh_in_a_fresh_root(self, box):
        log = (box.root / RUN_SH_LOG).read_text()
        assert "no input device on this machine; listening to the bundled clip" in log, log
        messages = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert any(m.get("topic", "").startswith("genre.") and m["genre"] for m in messages), log

    def test_the_unit_and_the_code_are_the_checkouts_and_torch_is_absent(self, box):
        box.sh(f"cmp /etc/systemd/system/{UNIT} {CHECKOUT_IN_CONTAINER}/systemd/{UNIT}")
        for module in ("pipeline.py", "service.py"):
            box.sh(f"cmp {VENV}/lib/python3.*/site-packages/streamclf/{module} "
                   f"{CHECKOUT_IN_CONTAINER}/streamclf/{module}")  # fmt: skip
        check = "import importlib.util as u; print(u.find_spec('torch'))"
        for python in (f"{VENV}/bin/python", "/root/streamclf/.venv/bin/python"):
            assert box.sh(f'{python} -c "{check}"').stdout.strip() == "None"


class TestSystemUnit:
    """systemctl start/reload/stop, the journal and the sandbox on the unchanged system unit."""

    def test_start_reaches_running_with_the_genre_in_status(self, box):
        write_config(box)
        box.sh(f"systemctl start {UNIT}", timeout_s=120)  # returns on READY=1 (Type=notify)
        props = show(box)
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
        props = wait_show(box, has_genre, timeout_s=30)
        assert has_genre(props), props["StatusText"]

    def test_subscriber_gets_genres_and_the_journal_holds_json_fields(self, box):
        got = records(subscribe(box, "--topic genre.", "--count 3", "--timeout 30"), 60)
        assert [r["topic"] for r in got] == ["genre.main"] * 3
        assert all(r["engine"] == "onnxruntime" and r["genre"] for r in got)
        main_pid = show(box)["MainPID"]
        entries = journal(box, f"_PID={main_pid}")
        assert entries and all(e["_SYSTEMD_UNIT"] == UNIT for e in entries)
        # journald keeps a line with control characters as a list of bytes
        lines = [m if isinstance(m, str) else bytes(m).decode(errors="replace")
                 for m in (e["MESSAGE"] for e in entries)]  # fmt: skip
        # Every line is one JSON object but ONNX Runtime's own warnings (plain, coloured text).
        assert all(line.startswith("{") or ":onnxruntime:" in line for line in lines), lines
        events = [json.loads(line) for line in lines if line.startswith("{")]
        started = [e for e in events if e["event"] == "pipeline_started"]
        assert started and started[0]["streams"] == ["main"] and started[0]["level"] == "info"
        assert all({"event", "level", "timestamp"} <= e.keys() for e in events)

    def test_the_sandbox_is_applied_and_rated_at_most_2(self, box):
        status = box.sh(f"cat /proc/{show(box)['MainPID']}/status").stdout
        fields = dict(re.findall(r"^(\w+):\s+(.*)$", status, re.MULTILINE))
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"  # filter mode
        assert int(fields["CapBnd"], 16) == 0 and int(fields["CapEff"], 16) == 0
        assert int(fields["Uid"].split()[0]) >= 61184  # DynamicUser's range
        problems = [e["MESSAGE"] for e in journal(box, f"_SYSTEMD_UNIT=init.scope UNIT={UNIT}")
                    if re.search(r"not supported|proceeding without|Failed to",
                                 str(e.get("MESSAGE")))]  # fmt: skip
        assert problems == [], problems
        assert "cgroupsv1" not in box.sh("journalctl -b _PID=1 --no-pager | grep -i tainted",
                                         check=False).stdout  # fmt: skip
        report = box.sh(f"systemd-analyze security {UNIT} --no-pager").stdout
        exposure = float(re.search(r"Overall exposure level for \S+: (\d+\.\d)", report).group(1))
        print(f"systemd-analyze security {UNIT}: {exposure}")
        assert exposure <= 2.0, report

    def test_the_bpf_sandbox_lines_are_enforced(self, box):
        """IPAddressDeny=/IPAddressAllow= and DevicePolicy= are cgroup BPF programs: probed with
        transient units under the same settings (loopback only; the TUN device is neither ALSA nor
        one of the pseudo devices that `closed` lets through)."""
        feed = f"import socket; socket.create_connection(('127.0.0.1', {FEED_PORT}), timeout=2)"
        probes = {
            "IPAddressDeny=any": f'-p IPAddressDeny=any {VENV}/bin/python -c "{feed}"',
            "DevicePolicy=closed": "-p DevicePolicy=closed -p DeviceAllow='char-alsa rw' "
                                   "head -c 0 /dev/net/tun",
        }
        unenforced = [line for line, probe in probes.items()
                      if box.sh(f"systemd-run -q --wait --pipe {probe}",
                                check=False).returncode == 0]
        allowed = box.sh(f"systemd-run -q --wait --pipe -p IPAddressDeny=any "
                         f'-p IPAddressAllow=localhost {VENV}/bin/python -c "{feed}"')  # fmt: skip
        assert allowed.returncode == 0
        if unenforced:
            pytest.skip(f"not enforced inside systemd-nspawn here (a probe under "
                        f"{', '.join(unenforced)} went through, systemd logged no reason); "
                        "docs/deploy.md section 10")  # fmt: skip

    def test_reload_applies_smoothing_without_a_seq_gap(self, box):
        pid = show(box)["MainPID"]
        feed = subscribe(box, "--topic genre.main", "--count 10", "--timeout 60")
        time.sleep(3.5)  # a few windows under the old setting
        write_config(box, unknown_threshold=0.99)
        box.sh(f"systemctl reload {UNIT}")  # returns on READY=1 after RELOADING=1
        got = records(feed, 90)
        seqs = [r["seq"] for r in got]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        assert got[0]["genre"] != "unknown" and got[-1]["genre"] == "unknown", got
        assert show(box)["MainPID"] == pid
        assert "config_reloaded" in [e["event"] for e in daemon_events(box, pid)]

    def test_stop_is_under_2_s_with_a_final_status(self, box):
        pid = show(box)["MainPID"]
        feed = subscribe(box, "--topic status.main", "--timeout 8")
        time.sleep(2.5)
        started = time.monotonic()
        box.sh(f"systemctl stop {UNIT}")
        took_s = time.monotonic() - started
        print(f"systemctl stop took {took_s:.2f} s")
        assert took_s < 2.0
        props = show(box)
        assert (props["ActiveState"], props["Result"]) == ("inactive", "success"), props
        out, _ = feed.communicate(timeout=30)
        statuses = [json.loads(line) for line in out.splitlines()]
        assert statuses and statuses[-1]["final"] is True
        assert "pipeline_stopped" in [e["event"] for e in daemon_events(box, pid)]


class TestWatchdog:
    """systemd kills and restarts a daemon that stops pinging, within WatchdogSec + RestartSec."""

    def test_unit_timings(self):
        unit = (REPO / "systemd" / UNIT).read_text()
        assert (_unit_setting(unit, "WatchdogSec"), _unit_setting(unit, "RestartSec")) == (
            WATCHDOG_S, RESTART_S)

    def test_a_frozen_daemon_is_restarted(self, box):
        write_config(box)
        props = restart_and_wait(box)
        restarts = int(props["NRestarts"])
        box.sh(f"kill -STOP {props['MainPID']}")
        took_s = seconds_until_restarted(box, props["MainPID"], WATCHDOG_S + RESTART_S)
        print(f"SIGSTOP to a new main process: {took_s:.1f} s")
        assert took_s <= WATCHDOG_S + RESTART_S + SPAWN_SLACK_S
        props = wait_show(box, has_genre, timeout_s=60)
        assert has_genre(props) and int(props["NRestarts"]) == restarts + 1, props
        messages = [e.get("MESSAGE", "") for e in journal(box, f"UNIT={UNIT}")]
        assert any("Watchdog timeout" in str(m) for m in messages)

    def test_a_stuck_stream_is_restarted(self, box):
        box.sh(f"systemd-run --unit=paced-wav {VENV}/bin/python "
               f"{CHECKOUT_IN_CONTAINER}/tests/paced_wav_server.py {STREAM_PORT}")  # fmt: skip
        try:
            url = f"http://127.0.0.1:{STREAM_PORT}/stream.wav"
            write_config(box, source=f'source = "url"\nurl = "{url}"')
            props = restart_and_wait(box)
            pid = props["MainPID"]
            reader = box.sh(f"pgrep -P {pid} -x ffmpeg").stdout.split()
            assert len(reader) == 1
            box.sh(f"kill -STOP {reader[0]}")  # the pipe stays open; nothing more comes
            took_s = seconds_until_restarted(box, pid, STALL_S + WATCHDOG_S + RESTART_S)
            print(f"ffmpeg reader SIGSTOPped to a new main process: {took_s:.1f} s")
            assert took_s <= STALL_S + WATCHDOG_S + RESTART_S + SPAWN_SLACK_S
            stalled = [e for e in daemon_events(box, pid) if e["event"] == "pipeline_stalled"]
            assert stalled and stalled[0]["stalled"] == "main: source", stalled
            assert has_genre(wait_show(box, has_genre, timeout_s=60))
        finally:
            box.sh("systemctl stop paced-wav", check=False)
            box.sh(f"systemctl stop {UNIT}", check=False)


class TestUncurableStarts:
    """A bad config (exit 2) or a broken model (exit 4) fails the start and stays failed."""

    @pytest.mark.parametrize(("code", "engine"), [
        (2, 'kind = "warp-drive"'),
        (4, 'model = "/etc/streamclf/model/fused_musicnn.onnx"'),
    ], ids=["bad-config", "broken-model"])  # fmt: skip
    def test_not_restarted_in_a_loop(self, box, code, engine):
        box.sh(f"systemctl stop {UNIT}; systemctl reset-failed {UNIT}", check=False)
        # the default model's card beside an .onnx file that is not that model
        box.sh(f"install -d /etc/streamclf/model && cp {VENV}/lib/python3.*/site-packages/"
               "streamclf/engines/fused_musicnn.json /etc/streamclf/model/ && "
               "head -c 4096 /dev/urandom > /etc/streamclf/model/fused_musicnn.onnx")
        write_config(box, engine=engine)
        assert box.sh(f"systemctl start {UNIT}", timeout_s=120, check=False).returncode != 0
        failed = show(box)
        time.sleep(RESTART_S + 2)  # a restart would have come by now
        props = show(box)
        assert (props["ActiveState"], props["Result"]) == ("failed", "exit-code"), props
        assert props["ExecMainStatus"] == str(code), props
        assert props["ExecMainStartTimestampMonotonic"] == failed["ExecMainStartTimestampMonotonic"]
        assert props["NRestarts"] == failed["NRestarts"]
        box.sh(f"systemctl reset-failed {UNIT}")


class TestUserUnit:
    """streamclf-user.service under a real user manager (a lingering user's)."""

    def test_starts_and_stops_under_the_user_manager(self, box):
        box.sh(f"id {USER} || useradd --create-home {USER}; loginctl enable-linger {USER}")
        uid = box.sh(f"id -u {USER}").stdout.strip()
        box.sh(f"systemctl start user@{uid}.service", timeout_s=60)
        write_config(box, path=f"/home/{USER}/.config/streamclf/streamclf.toml", user=USER)
        box.sh(f"mkdir -p ~/.config/systemd/user && cp {CHECKOUT_IN_CONTAINER}/systemd/"
               "streamclf-user.service ~/.config/systemd/user/streamclf.service && "
               f"export XDG_RUNTIME_DIR=/run/user/{uid} && systemctl --user daemon-reload && "
               "systemctl --user start streamclf", user=USER, timeout_s=120)  # fmt: skip
        props = wait_show(box, has_genre, timeout_s=60, user=USER)
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
        assert has_genre(props), props
        got = records(subscribe(box, "--topic genre.", "--count 2", "--timeout 30"), 60)
        assert len(got) == 2
        box.sh(f"XDG_RUNTIME_DIR=/run/user/{uid} systemctl --user stop streamclf", user=USER)
        props = show(box, user=USER)
        assert (props["ActiveState"], props["Result"]) == ("inactive", "success"), props
