"""One config tree: TOML read once into frozen dataclasses, validated on load.

Every stage gets only its own section (`cfg.engine`, `cfg.framing`, `cfg.smoothing`, `cfg.feed`,
`cfg.streams`, `cfg.service`, `cfg.loudness`, `cfg.alarms`, `cfg.metrics`, `cfg.outputs`). Any
problem is a `ConfigError` whose one-line message names the key (`streams[1].device: expected an
integer index or a name, got 3.5`); unknown keys are errors too, with a did-you-mean. The same
validation runs for the file, for `default_config()` and for the command-line overrides, so a
value that passes one passes all. Options are documented in docs/config.md and, with their
defaults, in configs/default.toml.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from streamclf.config.checks import (
    SECTION_CHECKS,
    check_config,
    is_loopback,
    show_value,
    split_host_port,
)
from streamclf.config.sections import (
    AUDIO_BOUNDARIES_HOP_S,
    DEFAULT_UNKNOWN_THRESHOLD,
    ENDPOINT_PATTERN,
    MIN_HOP_S,
    OUTPUT_DEFAULT_PORTS,
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
    LoudnessConfig,
    MetricsConfig,
    OutputConfig,
    ServiceConfig,
    SmoothingConfig,
    StreamConfig,
)
from streamclf.errors import ConfigError

__all__ = [  # the sections (config/sections.py) and the checks' helpers are part of the API
    "AUDIO_BOUNDARIES_HOP_S",
    "DEFAULT_UNKNOWN_THRESHOLD",
    "ENDPOINT_PATTERN",
    "LIVE_FEED_KEYS",
    "MIN_HOP_S",
    "OUTPUT_DEFAULT_PORTS",
    "OUTPUT_KEYS",
    "OVERRIDES",
    "SOURCE_KEYS",
    "STREAM_ID_PATTERN",
    "WINDOW_S",
    "WINDOW_TOLERANCE_S",
    "AlarmsConfig",
    "Config",
    "ContentConfig",
    "CurveConfig",
    "EngineConfig",
    "FeedConfig",
    "FramingConfig",
    "LoudnessConfig",
    "MetricsConfig",
    "OutputConfig",
    "ServiceConfig",
    "SmoothingConfig",
    "StreamConfig",
    "changed_keys",
    "config_from_dict",
    "config_with_overrides",
    "default_config",
    "is_loopback",
    "load_config",
    "parse_config",
    "parse_stream_spec",
    "split_host_port",
    "split_reload",
]


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
        msg = f"streams: expected an array of tables ([[streams]]), got {show_value(streams_raw)}"
        raise ConfigError(msg)
    if not streams_raw:
        msg = "streams: at least one stream is needed"
        raise ConfigError(msg)
    streams = tuple(_section(s, StreamConfig, f"streams[{i}]") for i, s in enumerate(streams_raw))
    outputs_raw = raw.get("outputs", [])
    if not isinstance(outputs_raw, list):
        msg = f"outputs: expected an array of tables ([[outputs]]), got {show_value(outputs_raw)}"
        raise ConfigError(msg)
    outputs = tuple(_section(o, OutputConfig, f"outputs[{i}]") for i, o in enumerate(outputs_raw))
    cfg = Config(streams=streams, outputs=outputs, **sections)
    check_config(cfg)
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


# -- types of TOML values ---------------------------------------------------------------------

# -- validation -------------------------------------------------------------------------------




def _check_keys(raw: Any, cls: type, where: str) -> None:
    if not isinstance(raw, dict):
        msg = f"{where or 'config'}: expected a table, got {show_value(raw)}"
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
    SECTION_CHECKS.get(cls, lambda _o, _w: None)(obj, where)
    return obj


def _value(value: Any, hint: Any, key: str) -> Any:
    """Check one TOML value against a field type; ints are accepted where floats are asked."""
    if dataclasses.is_dataclass(hint):
        return _section(value, hint, key)
    for option in _options(hint):
        ok, converted = _match(value, option)
        if ok:
            return converted
    msg = f"{key}: expected {_describe(hint)}, got {show_value(value)}"
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
