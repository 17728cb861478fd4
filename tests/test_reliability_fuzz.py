"""Bad input, fuzzed: the stdin PCM reader (any bytes, any read sizes) and the daemon fed random
bytes on stdin. The config loader and the feed decoder are fuzzed in test_config.py and
test_feed_schema.py (not repeated here); all three, coverage-guided, in
test_reliability_atheris.py."""

from __future__ import annotations

import subprocess

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import check_stdin_reader

from streamclf.audio.pcm import PCM_FORMATS
from streamclf.testing.daemon import START_TIMEOUT_S, Daemon, write_config


class TestStdinReader:
    """Whatever bytes arrive, in whatever pieces: the whole frames come out exactly (non-finite
    floats as 0, counted), a trailing partial frame is dropped, and the source ends."""

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.binary(max_size=4000), fmt=st.sampled_from(sorted(PCM_FORMATS)),
           channels=st.integers(1, 6), blocksize=st.integers(1, 300),
           sizes=st.lists(st.integers(1, 500), min_size=1, max_size=8))  # fmt: skip
    def test_any_bytes_any_reads(self, data, fmt, channels, blocksize, sizes):
        check_stdin_reader(data, fmt=fmt, channels=channels, blocksize=blocksize, sizes=sizes)


def test_daemon_survives_random_bytes_on_stdin(tmp_path):
    """Random f32le bytes (NaN, Inf, 1e38 among them) and a partial last frame: the daemon
    classifies what it can, ends at EOF by itself, exit 0, no traceback."""
    cfg = write_config(tmp_path, streams=[{"id": "in", "source": "stdin",
                                           "stdin_format": "f32le", "stdin_rate": 16000,
                                           "stdin_channels": 1}])  # fmt: skip
    noise = np.random.default_rng(11).bytes(16000 * 4 * 6 + 3)  # 6 s and three stray bytes
    with Daemon(cfg, stdin=subprocess.PIPE) as daemon:
        daemon.proc.stdin.write(noise)
        daemon.proc.stdin.close()
        assert daemon.wait(START_TIMEOUT_S) == 0
        text = daemon.stderr_text()
    assert "Traceback" not in text
    assert '"all_inputs_ended"' in text and '"pcm_partial_frame_dropped"' in text
