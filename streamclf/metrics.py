"""A Prometheus `/metrics` endpoint for the monitoring a station already runs.

Everything but the inference-time histogram is read from the pipeline when Prometheus scrapes
(a custom collector), so the audio path does no extra work per window for metrics. The endpoint
is off by default; `metrics.listen` is loopback unless changed (docs/config.md, `[metrics]`).
Metric names and labels are documented in docs/metrics.md, with alert rules beside them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streamclf.alarms import INPUT, KINDS
from streamclf.config import MetricsConfig, split_host_port
from streamclf.errors import FeedError

if TYPE_CHECKING:
    from streamclf.pipeline import Pipeline

# Per-window inference time, 1 ms .. 10 s: from a fast batched window to a stalled engine.
INFERENCE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def _finite(value: float | None) -> float:
    """Prometheus takes -inf, but a dashboard reads NaN ("no value") better than -inf LUFS."""
    return value if value is not None and math.isfinite(value) else math.nan


class PipelineCollector(Collector):
    """Reads the pipeline's per-stream state at scrape time."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._p = pipeline

    def collect(self) -> Iterator:
        p = self._p
        up = GaugeMetricFamily("streamclf_input_up", "1 while the stream's source runs and "
                               "delivers audio", labels=["stream"])
        level = GaugeMetricFamily("streamclf_level_dbfs", "RMS level of the last window",
                                  labels=["stream"])
        peak = GaugeMetricFamily("streamclf_true_peak_dbtp", "True peak of the last 100 ms",
                                 labels=["stream"])
        loudness = GaugeMetricFamily("streamclf_loudness_lufs", "EBU R128 loudness",
                                     labels=["stream", "window"])
        lra = GaugeMetricFamily("streamclf_loudness_range_lu", "EBU R128 loudness range",
                                labels=["stream"])
        genre = GaugeMetricFamily("streamclf_genre_probability", "Smoothed probability per genre",
                                  labels=["stream", "genre"])
        content = GaugeMetricFamily("streamclf_content_probability", "Probability of each content "
                                    "(music, speech, music+speech, silence) in the last window",
                                    labels=["stream", "content"])
        windows = CounterMetricFamily("streamclf_windows", "Windows classified", labels=["stream"])
        dropped = CounterMetricFamily("streamclf_dropped_windows", "Windows dropped (engine "
                                      "behind or failed)", labels=["stream"])
        overruns = CounterMetricFamily("streamclf_ring_overrun_samples", "Samples dropped by a "
                                       "full ring buffer", labels=["stream"])
        alarms = GaugeMetricFamily("streamclf_alarm_active", "1 while the alarm is on",
                                   labels=["stream", "alarm"])
        feed_drops = CounterMetricFamily("streamclf_feed_drops", "Messages the PUB socket refused")
        feed_drops.add_metric([], p.publisher.drops if p.publisher else 0)
        for stream in p.streams:
            sid = stream.stream_id
            active = stream.health.active
            up.add_metric([sid], float(stream.source.state == "running" and INPUT not in active))
            latest = p.latest.get(sid)
            level.add_metric([sid], _finite(latest.level_dbfs if latest else None))
            reading = stream.levels.latest if stream.levels is not None else None
            if reading is not None:
                active = active + stream.levels.alarms.active
                peak.add_metric([sid], _finite(reading.step_true_peak_dbtp))
                for window, value in (("momentary", reading.momentary_lufs),
                                      ("short_term", reading.short_term_lufs),
                                      ("integrated", reading.integrated_lufs)):
                    loudness.add_metric([sid, window], _finite(value))
                lra.add_metric([sid], reading.range_lu)
            smoothed = stream.smoothed
            if smoothed is not None:
                for name in p.genres:
                    genre.add_metric([sid, name], float(smoothed[p.card.labels.index(name)]))
            for label, p_content in (latest.content_probs or []) if latest else []:
                content.add_metric([sid, label], p_content)
            windows.add_metric([sid], stream.smoother.windows)
            dropped.add_metric([sid], stream.windows.dropped + stream.engine_failures)
            overruns.add_metric([sid], stream.ring.overrun_samples)
            for kind in KINDS:
                alarms.add_metric([sid, kind], float(kind in active))
        yield from (up, level, peak, loudness, lra, genre, content, windows, dropped, overruns,
                    alarms, feed_drops)


class MetricsServer:
    """The HTTP endpoint and the one metric updated on the engine worker (inference time)."""

    def __init__(self, pipeline: Pipeline, config: MetricsConfig) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(PipelineCollector(pipeline))
        self.inference_seconds = Histogram(
            "streamclf_inference_seconds", "Engine time per window (a batch's time / its windows)",
            ["stream"], buckets=INFERENCE_BUCKETS_S, registry=self.registry)
        host, port = split_host_port(config.listen)
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            msg = f"metrics.listen {config.listen}: cannot bind: {exc.strerror or exc}"
            raise FeedError(msg) from None
        self.port = self._server.server_port

    def observe_inference(self, stream_id: str, seconds: float) -> None:
        self.inference_seconds.labels(stream_id).observe(seconds)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(1.0)
