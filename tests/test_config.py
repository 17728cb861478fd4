"""The config loader: TOML → frozen dataclasses, every problem a one-line ConfigError naming the
key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamclf.config import (
    Config,
    StreamConfig,
    config_with_overrides,
    default_config,
    load_config,
    parse_config,
    parse_stream_spec,
    split_reload,
)
from streamclf.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class TestShippedConfigs:
    """configs/*.toml load, and default.toml is exactly the built-in defaults."""

    def test_default_toml_equals_default_config(self):
        assert load_config(CONFIGS / "default.toml") == default_config()

    @pytest.mark.parametrize("name", ["broadcast", "dj"])
    def test_examples_load(self, name):
        cfg = load_config(CONFIGS / f"{name}.toml")
        assert cfg != default_config()

    def test_broadcast_has_programme_cue_and_url(self):
        cfg = load_config(CONFIGS / "broadcast.toml")
        assert [(s.id, s.source, s.channel) for s in cfg.streams] == [
            ("programme", "device", 0), ("cue", "device", 2), ("web", "url", "mean")]
        assert cfg.smoothing.time_constant_s > default_config().smoothing.time_constant_s

    def test_dj_reacts_quickly(self):
        cfg = load_config(CONFIGS / "dj.toml")
        assert cfg.framing.hop_s == 0.5
        assert cfg.smoothing.time_constant_s < default_config().smoothing.time_constant_s

    def test_config_is_frozen(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            default_config().engine.kind = "torch"  # type: ignore[misc]


class TestErrors:
    """Each invalid value is rejected with a message that names the key and the problem."""

    @pytest.mark.parametrize(("text", "expected"), [
        ('[[streams]]\nid = "a"\n[[streams]]\nid = "b"\ndevice = 3.5\n',
         "streams[1].device: expected an integer index or a name, got 3.5"),
        ("[engin]\n", "engin: unknown key (did you mean 'engine'?)"),
        ("[engine]\nknd = 'torch'\n", "engine.knd: unknown key (did you mean 'kind'?)"),
        ("[engine]\nkind = 'cuda'\n", "engine.kind: expected"),
        ("[engine]\nmax_batch = true\n", "engine.max_batch: expected an integer, got True"),
        ("[engine]\nworkers = 65\n", "engine.workers: must be 0 (one per core)..64, got 65"),
        ("[framing]\nwindow_s = 5.0\n", "framing.window_s: the model's window is fixed"),
        ("[framing]\nhop_s = 4.0\n", "framing.hop_s: must be between"),
        ("[framing]\nhop_s = nan\n", "framing.hop_s: expected a finite number, got nan"),
        ("[smoothing]\nswitch_margin = 2\n", "smoothing.switch_margin: must be 0..1"),
        ("[smoothing]\nunknown_threshold = 1.5\n",
         "smoothing.unknown_threshold: must be 0 (off)..1"),
        ("[smoothing]\nunknown_threshold = 'card'\n",
         "smoothing.unknown_threshold: expected a finite number, got 'card'"),
        ("[feed]\nendpoint = 'udp://x'\n", "feed.endpoint: expected tcp://HOST:PORT"),
        ("[feed.curve]\nenabled = true\n", "feed.curve.server_secret_key_file: is required"),
        ("[feed]\ncurve = 1\n", "feed.curve: expected a table, got 1"),
        ("[[streams]]\nid = 'a b'\n", "streams[0].id: must be"),
        ("[[streams]]\n[[streams]]\n", "streams[1].id: duplicate stream id 'main'"),
        ("[[streams]]\nsource = 'file'\n", 'streams[0].path: is required for source = "file"'),
        ("[[streams]]\nurl = 'http://x'\n", 'streams[0].url: only applies to source = "url"'),
        ("[[streams]]\nchannel = -1\n", "streams[0].channel: expected \"mean\" or a 0-based"),
        ("streams = []\n", "streams: at least one stream is needed"),
        ("streams = 'x'\n", "streams: expected an array of tables"),
        ("[service]\nlog_level = 'loud'\n", "service.log_level: expected"),
        ("[alarms]\nsilence_s = -1\n", "alarms.silence_s: must be 0..86400 s, got -1.0"),
        ("[alarms]\nloudness_tolerance_lu = 0\n", "alarms.loudness_tolerance_lu: must be 0.1..40"),
        ("[alarms]\nsilence_lfs = -5\n", "alarms.silence_lfs: unknown key (did you mean 'silence_"),
        ("[loudness]\nenabled = 1\n", "loudness.enabled: expected true or false, got 1"),
        ("[content]\ntalk_genre = 'mute'\n", 'content.talk_genre: expected "talk" | "hold"'),
        ("[content]\nmin_dwell_s = -1\n", "content.min_dwell_s: must be 0..600 s, got -1.0"),
        ("[content]\nswitch_margin = 1.5\n", "content.switch_margin: must be 0..1, got 1.5"),
        ("[metrics]\nlisten = '9108'\n", "metrics.listen: expected HOST:PORT"),
        ("[metrics]\nlisten = '[::]:9108'\n", "metrics.listen: :: is not loopback"),
        ("[engine\n", "invalid TOML"),
        # integers beyond TOML's 64 bits (tomllib reads any size), a key holding a newline
        ("[framing]\nhop_s = 1" + "0" * 400, "framing.hop_s: expected a finite number, got 1000"),
        ("x = 1" + "0" * 5000, "invalid TOML: an integer of more than 4300 digits"),
        ("[engine]\nmax_batch = 0x" + "f" * 4000, "max_batch: expected an integer, got <int too"),
        ("[engine]\ngenres = [0x" + "f" * 4000 + "]", "genres: expected an array of strings, got"),
        ("[[streams]]\ndevice = 9223372036854775808", "streams[0].device: expected an integer"),
        ('[engine]\n"a\\nb" = 1', "engine.'a\\nb': unknown key"),
    ])
    def test_message_names_key(self, text, expected):
        with pytest.raises(ConfigError) as info:
            parse_config(text, origin="x.toml")
        message = str(info.value)
        assert message.startswith("x.toml: ")
        assert expected in message
        assert "\n" not in message

    def test_missing_file(self, tmp_path):
        with pytest.raises(ConfigError, match="cannot read config"):
            load_config(tmp_path / "nope.toml")

    def test_not_utf8(self, tmp_path):
        path = tmp_path / "bad.toml"
        path.write_bytes(b"[engine]\nmodel = '\xff'\n")
        with pytest.raises(ConfigError, match="not UTF-8"):
            load_config(path)

    def test_sections_may_be_omitted(self):
        cfg = parse_config("[feed]\ntop_k = 3\n")
        assert cfg.feed.top_k == 3
        assert cfg.streams == default_config().streams
        assert cfg.engine == default_config().engine

    def test_int_accepted_for_float(self):
        cfg = parse_config("[smoothing]\ntime_constant_s = 10\n")
        assert cfg.smoothing.time_constant_s == 10.0
        assert isinstance(cfg.smoothing.time_constant_s, float)


class TestUnknownThreshold:
    """Absent from the config, the unknown threshold is the model card's; set, the config's."""

    def test_absent_key_leaves_it_to_the_card(self):
        smoothing = parse_config("[smoothing]\ntime_constant_s = 2\n").smoothing
        assert smoothing.unknown_threshold is None
        assert smoothing.with_card_threshold(0.2).unknown_threshold == 0.2

    def test_a_card_without_one_gets_the_old_default(self):
        assert default_config().smoothing.with_card_threshold(None).unknown_threshold == 0.35

    @pytest.mark.parametrize("value", [0, 0.6])
    def test_an_explicit_value_wins_over_the_card(self, value):
        smoothing = parse_config(f"[smoothing]\nunknown_threshold = {value}\n").smoothing
        assert smoothing.with_card_threshold(0.2).unknown_threshold == value

    def test_overrides_keep_it_unset(self):
        cfg = config_with_overrides(default_config(), hop_s=0.5)
        assert cfg.smoothing.unknown_threshold is None


class TestOverrides:
    """Command-line values replace config values and pass the same validation."""

    def test_override_values(self):
        cfg = config_with_overrides(default_config(), engine_kind="onnxruntime", model="MTT_vgg",
                                    hop_s=0.5, endpoint="ipc:///tmp/x", log_level=None)
        assert cfg.engine.kind == "onnxruntime"
        assert cfg.engine.model == "MTT_vgg"
        assert cfg.framing.hop_s == 0.5
        assert cfg.feed.endpoint == "ipc:///tmp/x"
        assert cfg.service.log_level == "info"

    def test_override_is_validated(self):
        with pytest.raises(ConfigError, match=r"framing\.hop_s: must be between"):
            config_with_overrides(default_config(), hop_s=9.0)

    def test_unknown_override_is_a_programming_error(self):
        with pytest.raises(TypeError, match="hop"):
            config_with_overrides(default_config(), hop=1.0)

    def test_streams_replace_all(self):
        base = parse_config("[[streams]]\nid = 'a'\n[[streams]]\nid = 'b'\n")
        cfg = config_with_overrides(base, streams=[parse_stream_spec("file", "x.wav", loop=True)])
        assert cfg.streams == (StreamConfig(source="file", path="x.wav", loop=True),)


class TestReload:
    """SIGHUP applies the live keys; the rest keep their old value and are named for a restart."""

    OLD = "[framing]\nhop_s = 1.0\n[smoothing]\nmin_dwell_s = 3.0\n[feed]\ntop_k = 5\n"

    def test_split(self):
        old = parse_config(self.OLD)
        new = parse_config("[framing]\nhop_s = 0.5\n[smoothing]\nmin_dwell_s = 1.0\n"
                           "[feed]\ntop_k = 3\nendpoint = 'ipc:///tmp/other'\n"
                           "[[streams]]\nid = 'b'\n")
        running, applied, needs_restart = split_reload(old, new)
        assert applied == ["smoothing.min_dwell_s", "feed.top_k"]
        assert needs_restart == ["framing.hop_s", "feed.endpoint", "streams"]
        assert running.framing.hop_s == 1.0 and running.feed.endpoint == old.feed.endpoint
        assert running.smoothing.min_dwell_s == 1.0 and running.feed.top_k == 3
        assert running.streams == old.streams

    def test_unchanged(self):
        old = parse_config(self.OLD)
        assert split_reload(old, parse_config(self.OLD)) == (old, [], [])


class TestStreamSpecs:
    """The CLI's --device/--file/--url/--stdin become validated StreamConfigs."""

    def test_device_index_and_name(self):
        assert parse_stream_spec("device", "3").device == 3
        assert parse_stream_spec("device", "Scarlett").device == "Scarlett"
        assert parse_stream_spec("device").device == ""

    def test_channel_from_flag(self):
        assert parse_stream_spec("device", "1", channel="2").channel == 2
        assert parse_stream_spec("device", "1", channel=None).channel == "mean"

    def test_url_and_stdin(self):
        assert parse_stream_spec("url", "http://x/s.mp3").url == "http://x/s.mp3"
        spec = parse_stream_spec("stdin", stdin_format="f32le", stdin_rate=48000, stdin_channels=1)
        assert (spec.stdin_format, spec.stdin_rate, spec.stdin_channels) == ("f32le", 48000, 1)

    def test_errors_name_the_flag(self):
        with pytest.raises(ConfigError, match=r"--device\.channel"):
            parse_stream_spec("device", "1", channel="left")
        with pytest.raises(ConfigError, match=r"--file\.path: is required"):
            parse_stream_spec("file", "")
        with pytest.raises(ConfigError, match=r"--tape\.source"):
            parse_stream_spec("tape", "x")


# -- fuzzing ----------------------------------------------------------------------------------

KEYS = ["engine", "framing", "smoothing", "feed", "streams", "service", "curve", "kind", "model",
        "hop_s", "window_s", "id", "source", "device", "channel", "path", "endpoint", "top_k",
        "enabled", "ring_s", "time_constant_s", "x"]
SCALARS = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(),
                    st.text(max_size=12), st.sampled_from(["mean", "file", "device", "auto", ""]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12)
TOMLISH = st.lists(st.one_of(
    st.sampled_from(["[engine]", "[framing]", "[[streams]]", "[feed.curve]", "[feed]", "[x.y]",
                     "[[streams.x]]", "kind = 'torch'", "hop_s = 0.5", "device = 3.5", "=", "[",
                     "'''", '"', "id = 'a'", "source = 'file'", "a.b.c = 1", "[[[", "\\u0000"]),
    st.text(max_size=20)), max_size=12).map("\n".join)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _must_load_or_config_error(text: str) -> None:
    try:
        cfg = parse_config(text)
    except ConfigError as exc:
        assert "\n" not in str(exc).split(": invalid TOML:")[0]
    else:
        assert isinstance(cfg, Config)


class TestFuzz:
    """Random TOML-ish text and random value types: a Config or a ConfigError, nothing else."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(TOMLISH)
    def test_random_text(self, text):
        _must_load_or_config_error(text)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5))
    def test_random_values(self, table):
        text = "\n".join(f"{k} = {_toml_value(v)}" for k, v in table.items())
        _must_load_or_config_error(text)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(["engine", "framing", "smoothing", "feed", "feed.curve", "service",
                            "[streams]"]),
           st.dictionaries(st.sampled_from(KEYS + ["max_batch", "silence_dbfs", "loop",
                                                   "stdin_rate", "send_hwm", "watchdog"]),
                           VALUES, max_size=4))
    def test_random_section_values(self, section, table):
        body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in table.items())
        _must_load_or_config_error(f"[{section}]\n{body}\n")

    def test_deep_nesting_does_not_crash(self):
        _must_load_or_config_error("x = " + "[" * 5000 + "]" * 5000)
