"""One config tree: TOML read once into frozen dataclasses, validated on load.

Every stage gets only its own section (`cfg.engine`, `cfg.framing`, `cfg.smoothing`, `cfg.feed`,
`cfg.streams`, `cfg.service`, `cfg.loudness`, `cfg.alarms`, `cfg.metrics`, `cfg.outputs`). Any
problem is a `ConfigError` whose one-line message names the key (`streams[1].device: expected an
integer index or a name, got 3.5`); unknown keys are errors too, with a did-you-mean. The same
validation runs for the file, for `default_config()` and for the command-line overrides, so a
value that passes one passes all. Options are documented in docs/config.md and, with their defaults, in configs/default.toml.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamclf.errors import ConfigError

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
    time_constant_s: float = 3.0  # these three: tools/reaction_time.py, docs/live-genre.md
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


# -- public entry points ----------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config; every failure is one `ConfigError` line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        msg = f"{path}: cannot read config: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    except UnicodeDecodeError:
        msg = f"{path}: not UTF-8 text"
        raise ConfigError(msg) from None
    return parse_config(text, origin=str(path))


def parse_config(text: str, *, origin: str = "<config>") -> Config:
    """Validate TOML text; `origin` prefixes the error messages (the file name)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{origin}: invalid TOML: {exc}"
        raise ConfigError(msg) from None
    except ValueError:  # tomllib lets int() refuse a decimal integer of over 4300 digits
        msg = f"{origin}: invalid TOML: an integer of more than 4300 digits"
        raise ConfigError(msg) from None
    except RecursionError:
        msg = f"{origin}: invalid TOML: nested too deeply"
        raise ConfigError(msg) from None
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        msg = f"{origin}: {exc}"
        raise ConfigError(msg) from None


def default_config() -> Config:
    """The built-in defaults (the same values as configs/default.toml, which a test checks)."""
    return Config()


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate a TOML-shaped mapping (sections as tables, streams as a list of tables)."""
    _check_keys(raw, Config, "")
    hints = typing.get_type_hints(Config)
    sections = {name: _section(raw.get(name, {}), hint, name)
                for name, hint in hints.items() if name not in ("streams", "outputs")}
    streams_raw = raw.get("streams", [{}])
    if not isinstance(streams_raw, list):
        msg = f"streams: expected an array of tables ([[streams]]), got {_show(streams_raw)}"
        raise ConfigError(msg)
    if not streams_raw:
        msg = "streams: at least one stream is needed"
        raise ConfigError(msg)
    streams = tuple(_section(s, StreamConfig, f"streams[{i}]") for i, s in enumerate(streams_raw))
    outputs_raw = raw.get("outputs", [])
    if not isinstance(outputs_raw, list):
        msg = f"outputs: expected an array of tables ([[outputs]]), got {_show(outputs_raw)}"
        raise ConfigError(msg)
    outputs = tuple(_section(o, OutputConfig, f"outputs[{i}]") for i, o in enumerate(outputs_raw))
    cfg = Config(streams=streams, outputs=outputs, **sections)
    _check_config(cfg)
    return cfg


# Flat names for command-line overrides → (section, key). One table, so the CLI and the docs agree.
OVERRIDES: dict[str, tuple[str, str]] = {
    "engine_kind": ("engine", "kind"),
    "model": ("engine", "model"),
    "precision": ("engine", "precision"),
    "cpu_precision": ("engine", "cpu_precision"),
    "max_batch": ("engine", "max_batch"),
    "threads": ("engine", "threads"),
    "plan_cache_dir": ("engine", "plan_cache_dir"),
    "hop_s": ("framing", "hop_s"),
    "endpoint": ("feed", "endpoint"),
    "top_k": ("feed", "top_k"),
    "publish_probs": ("feed", "publish_probs"),
    "log_level": ("service", "log_level"),
    "log_format": ("service", "log_format"),
}


def config_with_overrides(cfg: Config, *, streams: list[StreamConfig] | None = None,
                          **overrides: Any) -> Config:
    """A copy of `cfg` with flag values applied; `None` means "not given", keep the config's.

    Names are the keys of `OVERRIDES` (e.g. `engine_kind="onnxruntime", hop_s=0.5`); `streams`
    replaces all configured streams. The result is validated like a file.
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        msg = f"unknown override(s) {', '.join(unknown)}; known: {', '.join(OVERRIDES)}"
        raise TypeError(msg)
    raw = _to_raw(cfg)
    for name, value in overrides.items():
        if value is not None:
            section, key = OVERRIDES[name]
            raw[section][key] = value
    if streams is not None:
        raw["streams"] = [_to_raw(s) for s in streams]
    return config_from_dict(raw)


def parse_stream_spec(source: str, value: Any = "", *, stream_id: str = "main",
                      **options: Any) -> StreamConfig:
    """One stream from command-line flags: `--device 3`, `--file x.wav`, `--url …`, `--stdin`.

    `value` is the flag's argument (device index or name, path, URL; ignored for stdin); a device
    given as a string of digits is an index. `options` are other `StreamConfig` fields (channel,
    loop, realtime, stdin_format, …); `None` values are ignored. A channel string of digits is an
    index.
    """
    raw: dict[str, Any] = {"id": stream_id, "source": source}
    if source == "device":
        raw["device"] = int(value) if isinstance(value, str) and value.isdigit() else value
    elif source == "file":
        raw["path"] = str(value)
    elif source == "url":
        raw["url"] = str(value)
    channel = options.get("channel")
    if isinstance(channel, str) and channel.isdigit():
        options["channel"] = int(channel)
    raw.update({k: v for k, v in options.items() if v is not None})
    return _section(raw, StreamConfig, f"--{source}")


# -- validation -------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    try:
        text = repr(value)
    except ValueError:  # an integer of over 4300 digits (TOML's hex, octal and binary have no cap)
        return f"<{type(value).__name__} too long to show>"
    return text if len(text) <= 60 else text[:57] + "..."


def _check_keys(raw: Any, cls: type, where: str) -> None:
    if not isinstance(raw, dict):
        msg = f"{where or 'config'}: expected a table, got {_show(raw)}"
        raise ConfigError(msg)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            name = str(key) if str(key).isprintable() else repr(str(key))  # one line, always
            msg = f"{_join(where, name)}: unknown key{hint}"
            raise ConfigError(msg)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _section(raw: Any, cls: type, where: str) -> Any:
    """Build one dataclass from a table: known keys only, each value checked against its type."""
    _check_keys(raw, cls, where)
    hints = typing.get_type_hints(cls)
    values = {key: _value(value, hints[key], _join(where, key)) for key, value in raw.items()}
    obj = cls(**values)
    _SECTION_CHECKS.get(cls, lambda _o, _w: None)(obj, where)
    return obj


def _value(value: Any, hint: Any, key: str) -> Any:
    """Check one TOML value against a field type; ints are accepted where floats are asked."""
    if dataclasses.is_dataclass(hint):
        return _section(value, hint, key)
    for option in _options(hint):
        ok, converted = _match(value, option)
        if ok:
            return converted
    msg = f"{key}: expected {_describe(hint)}, got {_show(value)}"
    raise ConfigError(msg)


def _options(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (`int | str`, `Literal["mean"] | int`), else the type."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) \
        else (hint,)


def _match(value: Any, option: Any) -> tuple[bool, Any]:
    if option is types.NoneType:  # "not set": never in TOML, only in a config's own copy
        return (value is None, value)
    if typing.get_origin(option) is Literal:
        return (isinstance(value, str) and value in typing.get_args(option), value)
    if option is bool:
        return (isinstance(value, bool), value)
    if option is int:
        return (_is_int64(value), value)
    if option is float:
        ok = _is_int64(value) or isinstance(value, float) and math.isfinite(value)
        return (ok, float(value) if ok else value)
    if option is str:
        return (isinstance(value, str), value)
    if typing.get_origin(option) is tuple:  # tuple[str, ...]: a TOML array of strings
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        return (ok, tuple(value) if ok else value)
    return (False, value)


def _is_int64(value: Any) -> bool:
    """An integer TOML can hold (64-bit signed; tomllib reads any size); bool is not one."""
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


def _describe(hint: Any) -> str:
    if hint == (int | str):
        return "an integer index or a name"
    parts = []
    for option in _options(hint):
        if option is types.NoneType:
            continue
        if typing.get_origin(option) is Literal:
            parts.append(" | ".join(f'"{v}"' for v in typing.get_args(option)))
        elif typing.get_origin(option) is tuple:
            parts.append("an array of strings")
        else:
            parts.append({bool: "true or false", int: "an integer", float: "a finite number",
                          str: "a string"}[option])
    return " or ".join(parts)


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def _check_engine(e: EngineConfig, where: str) -> None:
    _require(bool(e.model), f"{where}.model", "must name a model in engines/ or an .onnx path")
    _require(1 <= e.max_batch <= 1024, f"{where}.max_batch", f"must be 1..1024, got {e.max_batch}")
    _require(0 <= e.threads <= 256, f"{where}.threads", f"must be 0 (auto)..256, got {e.threads}")


def _check_framing(f: FramingConfig, where: str) -> None:
    _require(abs(f.window_s - WINDOW_S) <= WINDOW_TOLERANCE_S, f"{where}.window_s",
             f"the model's window is fixed at {WINDOW_S} s (187 frames), got {f.window_s}")
    _require(MIN_HOP_S <= f.hop_s <= f.window_s, f"{where}.hop_s",
             f"must be between {MIN_HOP_S} s (one frame) and window_s ({f.window_s} s), "
             f"got {f.hop_s}")
    _require(1 <= f.queue_windows <= 10_000, f"{where}.queue_windows",
             f"must be 1..10000, got {f.queue_windows}")


def _check_smoothing(s: SmoothingConfig, where: str) -> None:
    _require(0 <= s.time_constant_s <= 3600, f"{where}.time_constant_s",
             f"must be 0 (no smoothing)..3600 s, got {s.time_constant_s}")
    _require(0 <= s.switch_margin <= 1, f"{where}.switch_margin",
             f"must be 0..1, got {s.switch_margin}")
    _require(0 <= s.min_dwell_s <= 3600, f"{where}.min_dwell_s",
             f"must be 0..3600 s, got {s.min_dwell_s}")
    _require(-200 <= s.silence_dbfs <= 0, f"{where}.silence_dbfs",
             f"must be -200..0 dBFS, got {s.silence_dbfs}")
    _require(s.unknown_threshold is None or 0 <= s.unknown_threshold <= 1,
             f"{where}.unknown_threshold", f"must be 0 (off)..1, got {s.unknown_threshold}")


def _check_curve(c: CurveConfig, where: str) -> None:
    _require(not c.enabled or bool(c.server_secret_key_file), f"{where}.server_secret_key_file",
             "is required when curve is enabled")


def _check_feed(f: FeedConfig, where: str) -> None:
    _require(bool(ENDPOINT_PATTERN.fullmatch(f.endpoint)), f"{where}.endpoint",
             f"expected tcp://HOST:PORT or ipc://PATH, got {_show(f.endpoint)}")
    _require(1 <= f.send_hwm <= 1_000_000, f"{where}.send_hwm",
             f"must be 1..1000000 messages, got {f.send_hwm}")
    _require(1 <= f.top_k <= 1000, f"{where}.top_k", f"must be 1..1000, got {f.top_k}")
    _require(0.1 <= f.status_interval_s <= 3600, f"{where}.status_interval_s",
             f"must be 0.1..3600 s, got {f.status_interval_s}")


def _check_content(c: ContentConfig, where: str) -> None:
    _require(0 <= c.time_constant_s <= 600, f"{where}.time_constant_s",
             f"must be 0 (no smoothing)..600 s, got {c.time_constant_s}")
    _require(0 <= c.switch_margin <= 1, f"{where}.switch_margin",
             f"must be 0..1, got {c.switch_margin}")
    _require(0 <= c.min_dwell_s <= 600, f"{where}.min_dwell_s",
             f"must be 0..600 s, got {c.min_dwell_s}")


def _check_alarms(a: AlarmsConfig, where: str) -> None:
    for key, low, high, unit in (("silence_lufs", -120, 0, "LUFS"), ("silence_s", 0, 86400, "s"),
                                 ("true_peak_ceiling_dbtp", -60, 6, "dBTP"),
                                 ("loudness_target_lufs", -60, 0, "LUFS"),
                                 ("loudness_tolerance_lu", 0.1, 40, "LU"),
                                 ("loudness_s", 0, 86400, "s"), ("input_stalled_s", 0, 3600, "s"),
                                 ("engine_latency_ms", 0, 3_600_000, "ms"),
                                 ("clear_s", 0, 3600, "s")):
        value = getattr(a, key)
        _require(low <= value <= high, f"{where}.{key}",
                 f"must be {low}..{high} {unit}, got {value}")


def split_host_port(listen: str) -> tuple[str, int]:
    """"127.0.0.1:9108" → ("127.0.0.1", 9108); "[::1]:9108" → ("::1", 9108); ValueError if not."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        msg = f"expected HOST:PORT, got {listen!r}"
        raise ValueError(msg)
    return host, int(port)


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1; a name other than localhost is not trusted to be one."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_metrics(m: MetricsConfig, where: str) -> None:
    try:
        host, _ = split_host_port(m.listen)
    except ValueError:
        msg = f"{where}.listen: expected HOST:PORT (port 0..65535), got {_show(m.listen)}"
        raise ConfigError(msg) from None
    _require(m.allow_remote or is_loopback(host), f"{where}.listen",
             f"{host} is not loopback: anyone who can reach it reads the metrics; set "
             f"{where}.allow_remote = true to allow it")


def _check_stream(s: StreamConfig, where: str) -> None:
    _require(bool(STREAM_ID_PATTERN.fullmatch(s.id)), f"{where}.id",
             f"must be 1-64 characters of A-Z a-z 0-9 _ -, got {_show(s.id)}")
    _require(not isinstance(s.device, int) or s.device >= 0, f"{where}.device",
             f"a device index is >= 0, got {s.device}")
    _require(s.channel == "mean" or s.channel >= 0, f"{where}.channel",
             f"expected \"mean\" or a 0-based channel index, got {s.channel}")
    _require(16 <= s.blocksize <= 65536, f"{where}.blocksize",
             f"must be 16..65536 frames, got {s.blocksize}")
    _require(0.5 <= s.ring_s <= 600, f"{where}.ring_s", f"must be 0.5..600 s, got {s.ring_s}")
    _require(1000 <= s.stdin_rate <= 768_000, f"{where}.stdin_rate",
             f"must be 1000..768000 Hz, got {s.stdin_rate}")
    _require(1 <= s.stdin_channels <= 64, f"{where}.stdin_channels",
             f"must be 1..64, got {s.stdin_channels}")
    _require(s.source != "file" or bool(s.path), f"{where}.path", "is required for source = \"file\"")
    _require(s.source != "url" or bool(s.url), f"{where}.url", "is required for source = \"url\"")
    _require_keys_of_own_kind(s, "source", SOURCE_KEYS, where, owner="stream")
    _require(not (s.audio_boundaries and s.source == "url" and s.track_titles
                  and s.url.lower().startswith(("http://", "https://"))),
             f"{where}.audio_boundaries", "an http(s) url stream cuts its tracks at its ICY "
                                          "titles; set track_titles = false to cut them from "
                                          "the audio instead")


def _require_keys_of_own_kind(section, field: str, keys_by_kind: dict[str, tuple[str, ...]],
                              where: str, *, owner: str) -> None:
    """A key that belongs to another kind (a file's `path` on a url stream) must stay at its
    default: set, it would be silently ignored."""
    defaults = type(section)()
    own = getattr(section, field)
    for kind, keys in keys_by_kind.items():
        for key in keys:
            _require(kind == own or getattr(section, key) == getattr(defaults, key),
                     f"{where}.{key}", f"only applies to {field} = \"{kind}\", "
                                       f"this {owner}'s {field} is \"{own}\"")


def _check_output(o: OutputConfig, where: str) -> None:
    _require(not o.id or bool(STREAM_ID_PATTERN.fullmatch(o.id)), f"{where}.id",
             f"must be 1-64 characters of A-Z a-z 0-9 _ -, got {_show(o.id)}")
    _require(bool(o.host), f"{where}.host", "must not be empty")
    _require(0 <= o.port <= 65535, f"{where}.port", f"must be 0 (the kind's usual)..65535, "
                                                    f"got {o.port}")
    _require(1 <= o.queue_messages <= 100_000, f"{where}.queue_messages",
             f"must be 1..100000, got {o.queue_messages}")
    _require(0.01 <= o.retry_initial_s <= o.retry_max_s <= 3600, f"{where}.retry_max_s",
             f"need 0.01 <= retry_initial_s ({o.retry_initial_s}) <= retry_max_s "
             f"({o.retry_max_s}) <= 3600 s")
    _require(o.qos in (0, 1, 2), f"{where}.qos", f"must be 0, 1 or 2, got {o.qos}")
    _require(bool(o.topic_prefix) and not o.topic_prefix.endswith("/")
             and not set("#+") & set(o.topic_prefix), f"{where}.topic_prefix",
             f"a non-empty MQTT topic without a trailing / or wildcards, "
             f"got {_show(o.topic_prefix)}")
    _require(o.address_prefix.startswith("/") and not o.address_prefix.endswith("/")
             and " " not in o.address_prefix, f"{where}.address_prefix",
             f"an OSC address like \"/streamclf\", got {_show(o.address_prefix)}")
    _require(bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", o.source_id)), f"{where}.source_id",
             f"the id of a Liquidsoap server.insert_metadata, got {_show(o.source_id)}")
    _require(o.kind != "rds" or bool(o.pipe_path), f"{where}.pipe_path",
             "is required for kind = \"rds\"")
    _require_keys_of_own_kind(o, "kind", OUTPUT_KEYS, where, owner="output")


def _check_config(cfg: Config) -> None:
    seen: dict[str, int] = {}
    for i, s in enumerate(cfg.streams):
        _require(s.id not in seen, f"streams[{i}].id",
                 f"duplicate stream id {s.id!r} (also streams[{seen.get(s.id)}])")
        seen[s.id] = i
        _require(not s.audio_boundaries or cfg.framing.hop_s == AUDIO_BOUNDARIES_HOP_S,
                 f"streams[{i}].audio_boundaries", f"needs framing.hop_s = "
                 f"{AUDIO_BOUNDARIES_HOP_S} (the hop the detector was measured on), "
                 f"got {cfg.framing.hop_s}")
    names: dict[str, int] = {}
    for i, o in enumerate(cfg.outputs):
        _require(o.name not in names, f"outputs[{i}].id",
                 f"duplicate output {o.name!r} (also outputs[{names.get(o.name)}]): "
                 "give each an id")
        names[o.name] = i
        for stream_id in o.streams:
            _require(stream_id in seen, f"outputs[{i}].streams",
                     f"no stream {stream_id!r}; streams are {', '.join(seen)}")


_SECTION_CHECKS: dict[type, Callable[[Any, str], None]] = {
    EngineConfig: _check_engine,
    FramingConfig: _check_framing,
    SmoothingConfig: _check_smoothing,
    CurveConfig: _check_curve,
    FeedConfig: _check_feed,
    StreamConfig: _check_stream,
    AlarmsConfig: _check_alarms,
    ContentConfig: _check_content,
    MetricsConfig: _check_metrics,
    OutputConfig: _check_output,
}


def _to_raw(obj: Any) -> Any:
    """The TOML-shaped mapping of a config object (inverse of `config_from_dict`)."""
    raw = dataclasses.asdict(obj)
    for key in ("streams", "outputs"):
        if key in raw:
            raw[key] = list(raw[key])
    return raw


# What SIGHUP can change in a running daemon: read at each use, no socket or source touched.
LIVE_FEED_KEYS = ("top_k", "publish_probs", "status_interval_s")


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the keys that differ between two configs (a list of tables, `streams` or
    `outputs`, counts as one key), so a reload can say exactly what it did with each."""
    keys: list[str] = []
    for f in dataclasses.fields(old):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        if dataclasses.is_dataclass(before):
            keys += changed_keys(before, after, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def split_reload(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """The config a daemon runs after a reload, the changed keys it applied, and those that need a
    restart: `[smoothing]`, `[alarms]` and the feed's per-message options are live, the rest stays
    as it was until the next start, so the running config never claims a value it does not use."""
    live_feed = {key: getattr(new.feed, key) for key in LIVE_FEED_KEYS}
    running = dataclasses.replace(old, smoothing=new.smoothing, alarms=new.alarms,
                                  feed=dataclasses.replace(old.feed, **live_feed))
    changed = changed_keys(old, new)
    applied = changed_keys(old, running)
    return running, applied, [key for key in changed if key not in applied]
