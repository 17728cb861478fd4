"""The daemon spreads its streams' windows over the hop: stream k of n starts its window grid
k·hop/n frames in, so that n streams' windows do not all fall due at once (docs/architecture.md:
latency under load). Four real-time file streams through the real pipeline and engine."""

from __future__ import annotations

import time

import pytest
import soundfile as sf
from audio_helpers import CLIP_PATH
from pipeline_helpers import recorded_pipeline

from streamclf.features.framer import HOP_FRAMES, load_mono_16k
from streamclf.testing.daemon import write_config

STREAMS = 4


class RecordingRunner:
    """The real runner, recording the windows it runs, by stream."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.windows: dict[str, list] = {}

    def run(self, items):
        for stream_id, window in items:
            self.windows.setdefault(stream_id, []).append(window)
        return self._runner.run(items)

    def __getattr__(self, name: str):
        return getattr(self._runner, name)


@pytest.mark.timeout(120)
def test_streams_window_grids_are_spread_over_the_hop(tmp_path):
    wav = tmp_path / "clip8s.wav"
    sf.write(wav, load_mono_16k(CLIP_PATH)[: 8 * 16000], 16000)
    cfg = write_config(tmp_path, framing={"hop_s": 1.0},
                       streams=[{"id": f"s{k}", "source": "file", "path": wav, "realtime": True}
                                for k in range(STREAMS)])
    with recorded_pipeline(cfg.path, RecordingRunner) as (_, recorder):
        deadline = time.monotonic() + 60
        while not all(len(recorder.windows.get(f"s{k}", ())) >= 3 for k in range(STREAMS)):
            assert time.monotonic() < deadline, "the streams gave too few windows"
            time.sleep(0.1)
    for k in range(STREAMS):
        starts = [w.start_frame for w in recorder.windows[f"s{k}"]][:3]
        phase = k * HOP_FRAMES // STREAMS
        assert starts == [phase + i * HOP_FRAMES for i in range(3)], (k, starts)
