"""The config tree's sections: frozen dataclasses with their defaults, and the constants the
checks use (docs/config.md, configs/default.toml)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

WINDOW_S = 3.0  # fixed by the model: 187 frames of 256 samples at 16 kHz (2.992 s)
WINDOW_TOLERANCE_S = 0.01
MIN_HOP_S = 256 / 16000  # one STFT frame
AUDIO_BOUNDARIES_HOP_S = 1.0  # streamclf/boundaries.py counts in windows of this hop
DEFAULT_UNKNOWN_THRESHOLD = 0.35  # for a model whose card names no unknown threshold
STREAM_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
ENDPOINT_PATTERN = re.compile(r"(tcp://.+:[0-9*]+|ipc://.+)")
OUTPUT_KEYS = {  # the keys that only mean something for one kind of output
    "mqtt": ("topic_prefix", "qos"),
    "osc": ("address_prefix",),
    "liquidsoap": ("socket_path", "source_id"),
    "rds": ("pipe_path", "pty_table", "radiotext"),
}
OUTPUT_DEFAULT_PORTS = {"mqtt": 1883, "osc": 9000, "liquidsoap": 1234, "rds": 0}
SOURCE_KEYS = {  # the keys that only mean something for one kind of source
    "device": ("device",),
    "file": ("path", "loop", "realtime"),
    "url": ("url", "track_titles"),
    "stdin": ("stdin_format", "stdin_rate", "stdin_channels"),
}


@dataclass(frozen=True)
class EngineConfig:
    kind: Literal["auto", "onnxruntime", "tensorrt", "torch"] = "auto"
    model: str = "fused_musicnn"
    precision: Literal["fp16", "fp32"] = "fp16"
    # the ONNX Runtime incremental runner: int8 frame graph, "auto" = where the CPU has VNNI/AMX
    cpu_precision: Literal["auto", "fp32", "int8"] = "fp32"
    max_batch: int = 8  # memory: batch buffers, and a full-window engine's arena (docs/config.md)
    threads: int = 0
    # engine workers, each with its own runner and a share of the streams (ONNX Runtime on the
    # CPU only); 0 = one per core. docs/config.md
    workers: int = 1
    plan_cache_dir: str = ""
    incremental: bool = True  # per-frame front-end computed once per frame: docs/incremental.md
    genres: tuple[str, ...] = ()  # the model's tags a genre is chosen from; () = its card's


@dataclass(frozen=True)
class FramingConfig:
    window_s: float = WINDOW_S
    hop_s: float = 1.0
    queue_windows: int = 8


@dataclass(frozen=True)
class SmoothingConfig:
    time_constant_s: float = 1.5  # these three: tools/reaction_time.py, docs/live-genre.md
    switch_margin: float = 0.05
    min_dwell_s: float = 0.0
    silence_dbfs: float = -55.0
    # None (the key absent): the model card's `calibration.unknown_threshold`, chosen with the
    # head on unseen music (docs/model-selection.md), else DEFAULT_UNKNOWN_THRESHOLD
    unknown_threshold: float | None = None

    def with_card_threshold(self, card_threshold: float | None) -> SmoothingConfig:
        """This config with the unknown threshold to run: an explicit value wins, then the
        model card's, then DEFAULT_UNKNOWN_THRESHOLD (so a head ships with its own threshold)."""
        if self.unknown_threshold is not None:
            return self
        chosen = DEFAULT_UNKNOWN_THRESHOLD if card_threshold is None else card_threshold
        return dataclasses.replace(self, unknown_threshold=chosen)


@dataclass(frozen=True)
class CurveConfig:
    enabled: bool = False
    server_secret_key_file: str = ""
    authorized_clients_dir: str = ""


@dataclass(frozen=True)
class FeedConfig:
    endpoint: str = "tcp://127.0.0.1:5556"
    send_hwm: int = 1000
    top_k: int = 5
    publish_probs: bool = False
    status_interval_s: float = 5.0
    allow_insecure_remote: bool = False
    curve: CurveConfig = field(default_factory=CurveConfig)


@dataclass(frozen=True)
class LoudnessConfig:
    enabled: bool = True  # EBU R128 per stream on the source's audio (streamclf/loudness.py)


@dataclass(frozen=True)
class ContentConfig:
    enabled: bool = True  # music / speech / music+speech / silence per window (docs/content.md)
    talk_genre: Literal["talk", "hold"] = "talk"  # the genre a talk segment publishes
    time_constant_s: float = 1.0  # these three: tools/content_eval.py, docs/content.md
    switch_margin: float = 0.1
    min_dwell_s: float = 1.0


@dataclass(frozen=True)
class AlarmsConfig:
    silence_lufs: float = -60.0  # momentary loudness under this is silence ...
    silence_s: float = 10.0  # ... for this long starts the alarm; 0 = off
    true_peak_enabled: bool = True
    true_peak_ceiling_dbtp: float = -1.0  # EBU R128's maximum permitted true peak
    loudness_target_lufs: float = -23.0  # EBU R128 programme target
    loudness_tolerance_lu: float = 2.0
    loudness_s: float = 30.0  # short-term loudness off target this long; 0 = off
    input_stalled_s: float = 2.0  # no audio from a running source this long; 0 = off
    engine_latency_ms: float = 5000.0  # sound-to-publish latency over this; 0 = off
    clear_s: float = 2.0  # a condition gone this long ends its alarm


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = False  # a Prometheus /metrics endpoint (streamclf/metrics.py)
    listen: str = "127.0.0.1:9108"  # HOST:PORT ([::1]:PORT for IPv6)
    allow_remote: bool = False  # a non-loopback HOST must be allowed explicitly


@dataclass(frozen=True)
class StreamConfig:
    id: str = "main"
    source: Literal["device", "file", "url", "stdin"] = "device"
    device: int | str = ""  # "" = the system's default input
    channel: Literal["mean"] | int = "mean"
    blocksize: int = 1024
    path: str = ""
    loop: bool = False
    realtime: bool = True
    url: str = ""
    track_titles: bool = True  # url over http(s): tracks from the stream's ICY titles
    audio_boundaries: bool = False  # tracks from the audio (docs/tracks.md: why off by default)
    stdin_format: Literal["s16le", "f32le"] = "s16le"
    stdin_rate: int = 44100
    stdin_channels: int = 2
    ring_s: float = 10.0


@dataclass(frozen=True)
class OutputConfig:
    """One feed consumer that speaks a station's protocol (docs/outputs.md)."""

    kind: Literal["mqtt", "osc", "liquidsoap", "rds"] = "mqtt"
    id: str = ""  # "" = the kind; names the output in logs and status messages
    host: str = "127.0.0.1"
    port: int = 0  # 0 = the kind's usual port (OUTPUT_DEFAULT_PORTS)
    streams: tuple[str, ...] = ()  # the stream ids it follows; () = all
    queue_messages: int = 1000  # messages held while the target is slow or down; oldest dropped
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    topic_prefix: str = "streamclf"
    qos: int = 0
    address_prefix: str = "/streamclf"
    socket_path: str = ""  # liquidsoap: its server.socket path; "" = telnet on host:port
    source_id: str = "streamclf"  # liquidsoap: the id of its server.insert_metadata
    pipe_path: str = ""  # rds: the encoder's control pipe (FIFO)
    pty_table: Literal["rds", "rbds"] = "rds"  # rds: Europe's PTY codes or North America's
    radiotext: bool = False  # rds: also "RT Genre: <genre>" with its RT+ genre tag

    @property
    def name(self) -> str:
        return self.id or self.kind

    @property
    def target_port(self) -> int:
        return self.port or OUTPUT_DEFAULT_PORTS[self.kind]


@dataclass(frozen=True)
class ServiceConfig:
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    watchdog: bool = True


@dataclass(frozen=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    framing: FramingConfig = field(default_factory=FramingConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    streams: tuple[StreamConfig, ...] = (StreamConfig(),)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    loudness: LoudnessConfig = field(default_factory=LoudnessConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    outputs: tuple[OutputConfig, ...] = ()
