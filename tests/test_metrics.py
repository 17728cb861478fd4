"""On the air, end to end: `streamclf serve` with loudness, alarms and `/metrics`, scraped by a
real Prometheus server (Debian's, installed by scripts/setup.sh) on loopback.

One daemon run covers the alarm topic, the status fields, the warning log line and the metrics,
so the suite pays for one start-up of each server. The alarm is forced by a target the real
music cannot meet (−60 LUFS ± 0.1 for 5 s: after the subscriber has joined).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
from audio_helpers import wait_for
from e2e_helpers import CLIP, REPO, free_tcp_endpoint, free_tcp_port, run_cli
from prometheus_client.parser import text_string_to_metric_families

from streamclf.feed.schema import AlarmMessage, StatusMessage
from streamclf.feed.subscriber import Subscriber
from streamclf.testing.daemon import Daemon, write_config

ALARMS = {"loudness_target_lufs": -60.0, "loudness_tolerance_lu": 0.1, "loudness_s": 5.0,
          "true_peak_enabled": False}

PROMETHEUS_YML = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: streamclf
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
"""

needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None,
                                      reason="Debian's prometheus (scripts/setup.sh dev) missing")


def _query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)["data"]["result"]
    except OSError:
        return []


@pytest.fixture
def daemon(tmp_path):
    metrics_port = free_tcp_port()
    cfg = write_config(tmp_path, engine={"threads": 0}, service={"watchdog": True},
                       feed={"endpoint": free_tcp_endpoint(), "status_interval_s": 1.0},
                       alarms=ALARMS,
                       metrics={"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
                       streams=[{"id": "main", "source": "file", "path": CLIP, "loop": True}])
    sub = Subscriber(cfg.endpoint, topics=("alarm.", "status."))
    with Daemon(cfg) as daemon:
        yield daemon, sub, metrics_port
    sub.close()


@pytest.fixture
def prometheus(tmp_path, daemon):
    _, _, metrics_port = daemon
    port = free_tcp_port()
    (tmp_path / "prometheus.yml").write_text(PROMETHEUS_YML.format(metrics_port=metrics_port))
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield port
    proc.terminate()
    proc.wait(10)


@needs_prometheus
def test_alarms_status_and_metrics_scraped_by_prometheus(daemon, prometheus):
    daemon, sub, metrics_port = daemon
    messages = []

    def alarm_and_loud_status():
        message = sub.recv(0.2)
        if message is not None:
            messages.append(message)
        return any(isinstance(m, AlarmMessage) and m.alarm == "loudness" for m in messages) \
            and any(isinstance(m, StatusMessage) and m.alarms and m.windows for m in messages)

    assert wait_for(alarm_and_loud_status, timeout_s=60), messages
    alarm = next(m for m in messages if isinstance(m, AlarmMessage) and m.alarm == "loudness")
    assert (alarm.alarm, alarm.active, alarm.detail) == ("loudness", True, "above target")
    assert alarm.value > -30 and alarm.threshold == -60.0
    status = next(m for m in messages if isinstance(m, StatusMessage) and m.alarms)
    assert "loudness" in status.alarms
    assert -40 < status.short_term_lufs < -5 and status.true_peak_dbtp < 1.0

    # The daemon's own endpoint, parsed as Prometheus parses it.
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(r.read().decode())
                   for s in family.samples}
    main = (("stream", "main"),)
    assert samples[("streamclf_alarm_active", (("alarm", "loudness"), *main))] == 1.0
    assert samples[("streamclf_alarm_active", (("alarm", "silence"), *main))] == 0.0
    assert samples[("streamclf_input_up", main)] == 1.0
    assert 0 < samples[("streamclf_genre_probability", (("genre", "rock"), *main))] <= 1
    assert 0 <= samples[("streamclf_content_probability", (("content", "speech"), *main))] <= 1
    assert samples[("streamclf_windows_total", main)] >= 1
    assert samples[("streamclf_inference_seconds_count", main)] >= 1
    assert samples[("streamclf_feed_drops_total", ())] == 0.0
    assert -40 < samples[("streamclf_loudness_lufs", (*main, ("window", "short_term")))] < -5

    # The real Prometheus scraped it.
    def scraped(promql):
        return wait_for(lambda: bool(_query(prometheus, promql)), timeout_s=60, interval_s=0.5)

    assert scraped('streamclf_windows_total{stream="main"} > 0')
    assert scraped('streamclf_alarm_active{stream="main",alarm="loudness"} == 1')
    assert scraped('streamclf_loudness_lufs{stream="main",window="momentary"} > -60')
    assert scraped("streamclf_inference_seconds_count > 0")

    assert daemon.terminate(10)[0] == 0
    logs = daemon.events()
    started = [r for r in logs if r["event"] == "alarm_started"]
    assert started and started[0]["level"] == "warning" and started[0]["alarm"] == "loudness"


def test_example_alert_rules_pass_promtool():
    if shutil.which("promtool") is None:
        pytest.skip("Debian's prometheus (promtool) missing: scripts/setup.sh dev")
    proc = subprocess.run(["promtool", "check", "rules", "docs/prometheus-alerts.yml"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


@pytest.mark.parametrize(("value", "expected"), [
    ("nothing", "metrics.listen: expected HOST:PORT"),
    ("0.0.0.0:9108", "0.0.0.0 is not loopback"),
    ("127.0.0.1:70000", "metrics.listen: expected HOST:PORT"),
])
def test_bad_listen_is_one_line(tmp_path, value, expected):
    config = tmp_path / "bad.toml"
    config.write_text(f'[metrics]\nenabled = true\nlisten = "{value}"\n')
    proc = run_cli("serve", "--config", str(config), timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err and expected in err, err
