"""The start-up self-test: the chosen engine against the ONNX Runtime fp32 outputs stored beside
each card. A broken engine is stood in for by a deliberately perturbed model (MSD_musicnn with
its classifier bias raised by 2, so every tag moves by up to ~0.4): under `auto` the daemon falls
back to ONNX Runtime on the CPU, with the engine forced in the config it exits 5."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from e2e_helpers import CLIP, REPO, one_line_error
from onnx import numpy_helper
from structlog.testing import capture_logs

from streamclf.backends.incremental import IncrementalRunner
from streamclf.backends.runner import FullWindowRunner, load_engine
from streamclf.backends.selftest import (
    SELF_TEST_WINDOWS,
    checked_runner,
    load_references,
    reference_path,
    self_test_windows,
)
from streamclf.config import load_config
from streamclf.errors import EngineError
from streamclf.models.card import ENGINES_DIR, load_model_card, sha256_file
from streamclf.pipeline import Pipeline
from streamclf.testing.daemon import Daemon, write_config

MODEL = "MSD_musicnn"


def perturbed_model(folder, *, references_for_it: bool):
    """A copy of MSD_musicnn whose classifier bias is raised by 2, with its own card; with
    `references_for_it`, beside it the shipped references, claimed for the perturbed file (as
    if the model were right and the engine computing it wrong)."""
    model = onnx.load(REPO / "engines" / f"{MODEL}.onnx")
    bias = next(i for i in model.graph.initializer if i.name == "classifier.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 2.0, bias.name))
    onnx_path = folder / "perturbed.onnx"
    onnx.save(model, onnx_path)
    card = json.loads((REPO / "engines" / f"{MODEL}.json").read_text())
    card["onnx"] |= {"file": onnx_path.name, "sha256": sha256_file(onnx_path)}
    card_path = folder / "perturbed.json"
    card_path.write_text(json.dumps(card))
    if references_for_it:
        document = json.loads(reference_path(load_model_card(MODEL)).read_text())
        document["onnx_sha256"] = card["onnx"]["sha256"]
        (folder / "selftest").mkdir()
        (folder / "selftest" / f"{MODEL}.json").write_text(json.dumps(document))
    return card_path


class TestReferences:
    """Every packaged model has references, made for its very ONNX file, on the clip's first
    windows at a 1 s hop."""

    def test_every_packaged_model_has_current_references(self) -> None:
        cards = sorted(ENGINES_DIR.glob("*.json"))
        assert len(cards) == 5
        for path in cards:
            card = load_model_card(path)
            references = load_references(card)
            assert references is not None, card.name
            assert references.tags.shape == (SELF_TEST_WINDOWS, len(card.labels))
            assert ((references.tags > 0) & (references.tags < 1)).all()

    def test_windows_are_the_clips_first_at_a_1s_hop(self) -> None:
        windows = self_test_windows()
        assert [w.start_frame for w in windows] == [0, 62, 124]
        assert all(w.frames.shape == (187, 96) for w in windows)

    def test_a_model_without_references_is_used_untested(self, tmp_path) -> None:
        for suffix in (".json", ".onnx"):
            shutil.copy(REPO / "engines" / f"{MODEL}{suffix}", tmp_path / f"{MODEL}{suffix}")
        card = load_model_card(tmp_path / f"{MODEL}.json")
        runner = FullWindowRunner(load_engine(card, "onnxruntime", max_batch=1, threads=1))
        with capture_logs() as logs:
            assert checked_runner(runner, card, forced=True, fallback=None) is runner
        runner.close()
        assert [e["event"] for e in logs] == ["engine_self_test_skipped"]


class TestInThePipeline:
    """Pipeline.start runs the self-test after warm-up on the runner it will use."""

    def test_default_runner_passes(self, tmp_path) -> None:
        cfg = write_config(tmp_path, engine={"kind": "auto"},
                           streams=[{"id": "a", "source": "file", "path": CLIP}])
        pipeline = Pipeline(load_config(cfg.path), publish=False)
        with capture_logs() as logs:
            pipeline.start()
            pipeline.stop()
        assert isinstance(pipeline.runner, IncrementalRunner)
        passed = [e for e in logs if e["event"] == "engine_self_test_passed"]
        assert [e["windows"] for e in passed] == [SELF_TEST_WINDOWS]

    def test_broken_engine_under_auto_falls_back_to_onnxruntime_on_the_cpu(self, tmp_path):
        perturbed = load_model_card(perturbed_model(tmp_path, references_for_it=False))
        broken = FullWindowRunner(load_engine(perturbed, "onnxruntime", threads=1))

        def swap_in_the_broken_engine(runner):
            runner.close()
            return broken

        cfg = write_config(tmp_path, engine={"kind": "auto", "model": MODEL},
                           streams=[{"id": "a", "source": "file", "path": CLIP}])
        pipeline = Pipeline(load_config(cfg.path), publish=False,
                            runner_wrapper=swap_in_the_broken_engine)
        with capture_logs() as logs:
            pipeline.start()
            try:  # the fallback computes what the references say
                outputs = pipeline.runner.run([("x", w) for w in self_test_windows()])
            finally:
                pipeline.stop()
        np.testing.assert_allclose(outputs["tags"], load_references(pipeline.card).tags,
                                   atol=1e-5)
        failed = next(e for e in logs if e["event"] == "engine_self_test_failed")
        assert "tags differ from ONNX Runtime fp32 by" in failed["problem"]
        assert failed["log_level"] == "error"
        assert pipeline.runner is not broken
        assert isinstance(pipeline.runner, FullWindowRunner)
        assert pipeline.runner.info.name == "onnxruntime"
        passed = [e["engine"] for e in logs if e["event"] == "engine_self_test_passed"]
        assert passed == ["onnxruntime (fallback)"]

    def test_after_a_fallback_one_engine_worker(self, tmp_path):
        """Several `workers` are ONNX Runtime runners like the self-tested one; after the
        self-test fell back to another runner, the pipeline runs one worker and says so."""
        perturbed = load_model_card(perturbed_model(tmp_path, references_for_it=False))

        def swap_in_the_broken_engine(runner):
            runner.close()
            return FullWindowRunner(load_engine(perturbed, "onnxruntime", threads=1))

        cfg = write_config(tmp_path, engine={"kind": "auto", "model": MODEL, "workers": 2},
                           streams=[{"id": s, "source": "file", "path": CLIP} for s in "ab"])
        pipeline = Pipeline(load_config(cfg.path), publish=False,
                            runner_wrapper=swap_in_the_broken_engine)
        with capture_logs() as logs:
            pipeline.start()
            pipeline.stop()
        assert pipeline.runners == [pipeline.runner]
        reduced = next(e for e in logs if e["event"] == "engine_workers_reduced")
        assert (reduced["asked"], reduced["workers"]) == (2, 1)

    def test_direct_use_with_a_forced_engine_is_an_engine_error(self, tmp_path) -> None:
        card = load_model_card(perturbed_model(tmp_path, references_for_it=True))
        runner = FullWindowRunner(load_engine(card, "onnxruntime", max_batch=1, threads=1))
        with pytest.raises(EngineError, match="failed its start-up self-test"):
            checked_runner(runner, card, forced=True, fallback=None)


@pytest.mark.parametrize(("kind", "says"), [
    ("onnxruntime", "on onnxruntime (cpu (1 threads), fp32) failed its start-up self-test: tags"),
    ("auto", "fails its start-up self-test on ONNX Runtime too"),
])  # fmt: skip
def test_daemon_with_a_broken_engine_exits_5(tmp_path, kind, says):
    """The real daemon: forced, it exits 5 with one line; under auto it falls back, and since
    here the model itself is what is broken, the fallback fails too: exit 5 as well."""
    model = perturbed_model(tmp_path, references_for_it=True)
    cfg = write_config(tmp_path, engine={"kind": kind, "model": str(model)},
                       streams=[{"id": "a", "source": "file", "path": CLIP}])
    with Daemon(cfg) as daemon:
        line = one_line_error(daemon.wait(120), daemon.stderr_text(), EngineError.exit_code)
    assert EngineError.exit_code == 5 and says in line, line
    assert "READY=1" not in daemon.notify.lines()
