"""What each section's values must be, beyond their types: one `ConfigError` line per problem,
naming the key."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from streamclf.config.sections import (
    AUDIO_BOUNDARIES_HOP_S,
    ENDPOINT_PATTERN,
    MIN_HOP_S,
    OUTPUT_KEYS,
    SOURCE_KEYS,
    STREAM_ID_PATTERN,
    WINDOW_S,
    WINDOW_TOLERANCE_S,
    AlarmsConfig,
    Config,
    ContentConfig,
    CurveConfig,
    EngineConfig,
    FeedConfig,
    FramingConfig,
    MetricsConfig,
    OutputConfig,
    SmoothingConfig,
    StreamConfig,
)
from streamclf.errors import ConfigError


def show_value(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    try:
        text = repr(value)
    except ValueError:  # an integer of over 4300 digits (TOML's hex, octal and binary have no cap)
        return f"<{type(value).__name__} too long to show>"
    return text if len(text) <= 60 else text[:57] + "..."


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def _check_engine(e: EngineConfig, where: str) -> None:
    _require(bool(e.model), f"{where}.model", "must name a model in engines/ or an .onnx path")
    _require(1 <= e.max_batch <= 1024, f"{where}.max_batch", f"must be 1..1024, got {e.max_batch}")
    _require(0 <= e.threads <= 256, f"{where}.threads", f"must be 0 (auto)..256, got {e.threads}")
    _require(0 <= e.workers <= 64, f"{where}.workers",
             f"must be 0 (one per core)..64, got {e.workers}")


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
             f"expected tcp://HOST:PORT or ipc://PATH, got {show_value(f.endpoint)}")
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
        msg = f"{where}.listen: expected HOST:PORT (port 0..65535), got {show_value(m.listen)}"
        raise ConfigError(msg) from None
    _require(m.allow_remote or is_loopback(host), f"{where}.listen",
             f"{host} is not loopback: anyone who can reach it reads the metrics; set "
             f"{where}.allow_remote = true to allow it")


def _check_stream(s: StreamConfig, where: str) -> None:
    _require(bool(STREAM_ID_PATTERN.fullmatch(s.id)), f"{where}.id",
             f"must be 1-64 characters of A-Z a-z 0-9 _ -, got {show_value(s.id)}")
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
    _require(s.source != "file" or bool(s.path), f"{where}.path",
             "is required for source = \"file\"")
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
             f"must be 1-64 characters of A-Z a-z 0-9 _ -, got {show_value(o.id)}")
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
             f"got {show_value(o.topic_prefix)}")
    _require(o.address_prefix.startswith("/") and not o.address_prefix.endswith("/")
             and " " not in o.address_prefix, f"{where}.address_prefix",
             f"an OSC address like \"/streamclf\", got {show_value(o.address_prefix)}")
    _require(bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", o.source_id)), f"{where}.source_id",
             f"the id of a Liquidsoap server.insert_metadata, got {show_value(o.source_id)}")
    _require(o.kind != "rds" or bool(o.pipe_path), f"{where}.pipe_path",
             "is required for kind = \"rds\"")
    _require_keys_of_own_kind(o, "kind", OUTPUT_KEYS, where, owner="output")


def check_config(cfg: Config) -> None:
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


SECTION_CHECKS: dict[type, Callable[[Any, str], None]] = {
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
