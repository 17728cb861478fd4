"""Heads pulled toward the tag→family map, their cross-validation, and their graph form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamclf.models.card import MSD_LABELS, MTT_LABELS
from streamclf.models.taxonomy import FAMILIES
from streamclf.train.folds import Track, group_folds
from streamclf.train.fused import FusedMusicnn
from streamclf.train.maphead import (
    MUSICNN,
    HeadSpec,
    Windows,
    fit_head,
    head_from_calibration,
    softmax,
)
from streamclf.train.pooling import attention_pool, fit_attention
from streamclf.train.select import (
    Result,
    aggregate,
    beats,
    cross_validate,
    fixed_fusion,
    head,
    main,
)
from streamclf.train.ship import MIN_PUBLISHED, genre_thresholds, nested_check, validate_card

TRACKS_PER_FAMILY = 6
WINDOWS_PER_TRACK = 8
CLASSES = ("rock", "classical", "jazz")
GENRES = Path(__file__).resolve().parent.parent / "datasets" / "genres"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The fits are tiny full-batch problems: a second thread only contends (as in `main`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic(rng: np.random.Generator) -> tuple[Windows, list[Track]]:
    """Three families; the map's own tags are noise, but MTT 'piano' (unmapped) marks jazz and
    MSD 'rock' marks rock, so a head that may use every tag can beat the zero-shot map."""
    tracks, truth, clip = [], [], []
    for family in CLASSES:
        for i in range(TRACKS_PER_FAMILY):
            tracks.append(Track(f"{family}{i}", family, f"{family}-pkg{i}", f"{family}-artist{i}"))
            truth += [FAMILIES.index(family)] * WINDOWS_PER_TRACK
            clip += [len(tracks) - 1] * WINDOWS_PER_TRACK
    truth, clip = np.array(truth), np.array(clip)
    n = len(truth)
    mtt = rng.uniform(0.05, 0.3, (n, 50)).astype(np.float32)
    msd = rng.uniform(0.05, 0.3, (n, 50)).astype(np.float32)
    jazz, rock = truth == FAMILIES.index("jazz"), truth == FAMILIES.index("rock")
    mtt[jazz, MTT_LABELS.index("piano")] += 0.6
    msd[rock, MSD_LABELS.index("rock")] += 0.6
    msd[~jazz, MSD_LABELS.index("jazz")] += 0.3  # the mapped jazz tag misleads
    embedding = {t: rng.standard_normal((n, 200)).astype(np.float32) for t in MUSICNN}
    return Windows(truth, clip, {"MTT_musicnn": mtt, "MSD_musicnn": msd}, embedding), tracks


class TestHeads:
    """A head starts at the map, leaves it only as far as λ allows, and predicts as its graph."""

    def test_strong_pull_keeps_the_map(self, rng):
        windows, _ = synthetic(rng)
        rows = np.arange(len(windows.truth))
        fixed = fit_head(HeadSpec(MUSICNN, fixed=True), windows, rows, strength=0.0)
        assert set(fixed.weight.ravel()) == {0.0, 1.0} and (fixed.bias == 0).all()
        fitted = fit_head(HeadSpec(MUSICNN, "tags"), windows, rows, strength=1e4)
        assert np.abs(fitted.residual_weight).max() < 1e-2
        loose = fit_head(HeadSpec(MUSICNN, "tags"), windows, rows, strength=1e-3)
        assert np.abs(loose.residual_weight).max() > 0.1

    def test_families_absent_from_training_keep_the_mean_and_no_correction(self, rng):
        windows, _ = synthetic(rng)
        fitted = fit_head(HeadSpec(MUSICNN, "tags"), windows, np.arange(len(windows.truth)),
                          strength=1e-2)
        metal = FAMILIES.index("metal")
        assert not fitted.trained_families[metal]
        assert (fitted.residual_weight[metal] == 0).all()
        trained = fitted.trained_families
        assert fitted.bias[metal] == pytest.approx(fitted.bias[trained].mean())

    def test_cross_validated_head_beats_the_zero_shot_map_here(self, rng):
        windows, tracks = synthetic(rng)
        folds = group_folds(tracks, k=3)
        results = cross_validate(windows, tracks, folds,
                                 [fixed_fusion(MUSICNN), head("h", HeadSpec(MUSICNN, "tags"))])
        fusion, fitted = results
        assert np.mean(fitted.window_f1) > np.mean(fusion.window_f1) + 0.2
        assert len(fitted.window_f1) == 3
        assert fitted.oof.shape == (len(windows.truth), len(FAMILIES))

    def test_augmented_windows_train_only_the_heads_that_ask_and_never_test(self, rng):
        windows, tracks = synthetic(rng)
        n = len(windows.truth)
        junk = {k: rng.random(v.shape).astype(np.float32) for k, v in windows.tags.items()}
        grown = Windows(np.concatenate([windows.truth, windows.truth]),
                        np.concatenate([windows.clip, windows.clip]),
                        {k: np.concatenate([v, junk[k]]) for k, v in windows.tags.items()},
                        {k: np.concatenate([v, v]) for k, v in windows.embedding.items()},
                        augmented=np.arange(2 * n) >= n)
        folds = group_folds(tracks, k=3)
        plain = [head("map", HeadSpec(MUSICNN))]
        asked = [head("map, augmented", HeadSpec(MUSICNN, augmented=True))]
        without = cross_validate(windows, tracks, folds, plain)[0]
        ignoring, using = cross_validate(grown, tracks, folds, plain + asked)
        assert ignoring.window_f1 == without.window_f1
        assert ignoring.track_acc == without.track_acc
        assert using.window_f1 != without.window_f1  # the junk copies did train it

    @pytest.mark.parametrize("residual", ["tags", "embedding"])
    def test_graph_head_equals_the_numpy_head(self, rng, residual):
        windows, _ = synthetic(rng)
        rows = np.arange(len(windows.truth))
        fitted = fit_head(HeadSpec(MUSICNN, residual), windows, rows, strength=1e-2)
        calibration = {"weight_mtt": fitted.weight[0].tolist(),
                       "weight_msd": fitted.weight[1].tolist(),
                       "bias": fitted.bias.tolist(), "residual": {
                           "input": residual, "weight": fitted.residual_weight.tolist(),
                           "mean": fitted.mean.tolist(), "scale": fitted.scale.tolist()}}
        again = head_from_calibration(calibration)
        want = softmax(fitted.logits(windows, rows))
        np.testing.assert_allclose(softmax(again.logits(windows, rows)), want, atol=1e-5)
        params = {k: np.asarray(calibration[k]) for k in ("weight_mtt", "weight_msd", "bias")}
        graph = FusedMusicnn(torch.nn.Identity(), torch.nn.Identity(), **params,
                             residual=calibration["residual"])
        t = {k: torch.as_tensor(v) for k, v in {**windows.tags, **{
            f"{k}_emb": v for k, v in windows.embedding.items()}}.items()}
        probs, _ = graph.combine(t["MTT_musicnn"], t["MTT_musicnn_emb"], t["MSD_musicnn"],
                                 t["MSD_musicnn_emb"])
        np.testing.assert_allclose(probs.numpy(), want, atol=1e-4)


class TestDecisions:
    """Track aggregates and the unknown threshold on hand-made cases."""

    def test_aggregates(self):
        allowed = np.ones(len(FAMILIES), bool)
        probs = np.zeros((3, len(FAMILIES)))
        probs[0, 0], probs[0, 1] = 0.9, 0.1  # one confident window for family 0
        probs[1:, 0], probs[1:, 1] = 0.4, 0.6  # two mild windows for family 1
        owners = np.zeros(3, int)
        assert aggregate(probs, owners, allowed, "mean")[1].tolist() == [0]
        assert aggregate(probs, owners, allowed, "vote")[1].tolist() == [1]
        # the log-mean favours the family no window rules out
        probs = np.zeros((2, len(FAMILIES)))
        probs[:, :3] = [[0.7, 0.01, 0.29], [0.02, 0.69, 0.29]]
        assert aggregate(probs, owners[:2], allowed, "mean")[1].tolist() == [0]
        assert aggregate(probs, owners[:2], allowed, "logmean")[1].tolist() == [2]

    def test_beating_needs_the_mean_and_more_folds_won_than_lost(self):
        today = Result("today", window_f1=[0.2, 0.2, 0.2])
        assert not beats(Result("lucky", window_f1=[0.9, 0.1, 0.1]), today)  # mean up, 1 of 3
        assert beats(Result("steady", window_f1=[0.3, 0.3, 0.1]), today)
        assert not beats(Result("same", window_f1=[0.2, 0.2, 0.2]), today)


class TestAttentionPooling:
    """Attention over a track's windows: the plain mean at u = 0, and it learns which windows
    tell when a feature marks them."""

    def test_zero_attention_is_the_mean(self, rng):
        probs = softmax(rng.standard_normal((7, len(FAMILIES))))
        owners = np.array([3, 3, 3, 5, 5, 5, 5])
        ids, pooled = attention_pool(probs, rng.standard_normal((7, 4)), owners, np.zeros(4))
        assert ids.tolist() == [3, 5]
        np.testing.assert_allclose(pooled, [probs[:3].mean(0), probs[3:].mean(0)])

    def test_learns_to_listen_to_the_marked_windows(self):
        """Each track: one window that names its family (feature +1) and two louder ones that
        name the other family (feature −1): the mean is wrong, the fitted attention right."""
        rock, jazz = FAMILIES.index("rock"), FAMILIES.index("jazz")
        probs, features, owners, truth = [], [], [], []
        for track in range(8):
            own, other = (rock, jazz) if track % 2 else (jazz, rock)
            for telling in (True, False, False):
                p = np.full(len(FAMILIES), 0.01)
                p[own if telling else other] = 0.6 if telling else 0.7
                probs.append(p / p.sum())
                features.append([1.0 if telling else -1.0])
                owners.append(track)
                truth.append(own)
        probs, features = np.array(probs), np.array(features)
        owners, truth = np.array(owners), np.array(truth)
        track_truth = truth[::3]
        mean = np.array([probs[owners == t].mean(0) for t in range(8)]).argmax(1)
        assert (mean != track_truth).all()
        u = fit_attention(probs, features, owners, truth, strength=1e-3)
        _, pooled = attention_pool(probs, features, owners, u)
        assert (pooled.argmax(1) == track_truth).all()


class TestValidation:
    """Which genres the default may publish, each at its own threshold, from out-of-fold
    probabilities on unseen groups."""

    @staticmethod
    def named(family: str, confidences: list[float]) -> np.ndarray:
        probs = np.zeros((len(confidences), len(FAMILIES)))
        probs[:, FAMILIES.index(family)] = confidences
        probs[:, FAMILIES.index("ambient")] = 0.01
        return probs

    def test_each_family_gets_the_smallest_threshold_that_reaches_two_in_three(self):
        rock, jazz = FAMILIES.index("rock"), FAMILIES.index("jazz")
        # rock: 12 right at 0.9, 8 wrong at 0.5 (12 of 20 overall: under 2 in 3)
        # jazz: 10 right at 0.3, 5 wrong at 0.2 (10 of 15: 2 in 3 from the start)
        probs = np.concatenate([self.named("rock", [0.9] * 12 + [0.5] * 8),
                                self.named("jazz", [0.3] * 10 + [0.2] * 5)])
        truth = np.array([rock] * 12 + [jazz] * 8 + [jazz] * 10 + [rock] * 5)
        found = genre_thresholds(probs, truth, {"rock": 2, "jazz": 2}, np.zeros(35, int))
        assert found["rock"] == {"threshold": 0.55, "precision": 1.0, "recall": round(12 / 17, 4)}
        assert found["jazz"]["threshold"] == 0.0
        assert found["jazz"]["precision"] == round(10 / 15, 4)

    def test_one_group_or_too_few_windows_is_never_published(self):
        rock = FAMILIES.index("rock")
        many = self.named("rock", [0.9] * 20)
        assert genre_thresholds(many, np.full(20, rock), {"rock": 1}, np.zeros(20, int)) == {}
        few = self.named("rock", [0.9] * (MIN_PUBLISHED - 1))
        assert genre_thresholds(few, np.full(len(few), rock), {"rock": 2},
                                np.zeros(len(few), int)) == {}

    def test_a_family_never_right_enough_is_not_published(self):
        rock, jazz = FAMILIES.index("rock"), FAMILIES.index("jazz")
        probs = self.named("rock", np.linspace(0.2, 0.9, 30).tolist())
        truth = np.array([rock, jazz] * 15)
        assert genre_thresholds(probs, truth, {"rock": 3, "jazz": 3}, np.zeros(30, int)) == {}

    def test_a_fold_where_the_family_fails_raises_its_threshold(self):
        """Fold 0 names rock right at 0.9 (16 windows); fold 1 names it wrongly 6 times at 0.6:
        14 of 20 overall (7 in 10) would pass, but fold 1 alone does not."""
        rock, jazz = FAMILIES.index("rock"), FAMILIES.index("jazz")
        probs = self.named("rock", [0.9] * 16 + [0.6] * 6 + [0.6] * 2)
        truth = np.array([rock] * 14 + [jazz] * 2 + [jazz] * 6 + [rock] * 2)
        fold = np.array([0] * 16 + [1] * 8)
        found = genre_thresholds(probs, truth, {"rock": 2}, fold)
        assert found["rock"]["threshold"] == 0.65  # fold 1 publishes nothing above 0.6
        assert genre_thresholds(probs, truth, {"rock": 2}, np.zeros(24, int))["rock"][
            "threshold"] == 0.0

    def test_nested_check_chooses_without_the_fold_it_scores(self):
        """Rock is right in folds 0 and 1 and wrong in fold 2. Chosen without fold 2, it is
        published there, all wrong; chosen with fold 2 it fails there and is not published in
        fold 0 or 1: the rule is judged on what it did not see."""
        rock, jazz = FAMILIES.index("rock"), FAMILIES.index("jazz")
        probs = self.named("rock", [0.9] * 36)
        truth = np.array([rock] * 24 + [jazz] * 12)
        fold = np.repeat([0, 1, 2], 12)
        tracks = [Track(f"t{i}", "rock" if i < 2 else "jazz", f"p{i}", f"a{i}") for i in range(3)]
        tracks.append(Track("t3", "rock", "p3", "a3"))
        nested = nested_check(probs, truth, fold, tracks, [0, 1, 2, 0])
        assert nested["published_share"] == pytest.approx(1 / 3, abs=1e-4)
        assert nested["right"] == 0.0

    def test_validate_card_rewrites_only_what_it_publishes(self, rng, tmp_path):
        import json

        windows, tracks = synthetic(rng)
        oof = np.full((len(windows.truth), len(FAMILIES)), 0.01)
        oof[np.arange(len(oof)), windows.truth] = 0.9  # every family right, surely
        card = {"name": "fused_musicnn", "genres": list(FAMILIES),
                "calibration": {"unknown_threshold": 0.35, "bias": [0.0]}}
        (tmp_path / "fused_musicnn.json").write_text(json.dumps(card))
        validate_card(Result("today", oof=oof), windows, tracks, group_folds(tracks, k=3),
                      out=tmp_path, summary=[{"name": "today"}, {"name": "other"}])
        written = json.loads((tmp_path / "fused_musicnn.json").read_text())
        assert written["genres"] == [f for f in FAMILIES if f in CLASSES]
        assert written["calibration"] == {"unknown_threshold": 0.35, "bias": [0.0],
                                          "genre_thresholds": dict.fromkeys(
                                              written["genres"], 0.0)}
        assert written["validation"]["cross_validation"] == [{"name": "today"}]


class TestShipStaging:
    """The ship step changes `engines/` all at once or not at all (the graph export and the
    split are stood in for: their own tests run the real ones)."""

    FILES = ("fused_musicnn.onnx", "fused_musicnn.json", "split/fused_musicnn.frame.onnx",
             "split/fused_musicnn.window.onnx", "split/fused_musicnn.json")

    @pytest.fixture
    def shipping(self, rng, tmp_path, monkeypatch):
        import streamclf.train.fused
        import streamclf.train.split
        from streamclf.errors import ModelError
        from streamclf.train.ship import ship

        windows, tracks = synthetic(rng)
        for part in MUSICNN:
            (tmp_path / f"{part}.onnx").write_bytes(b"part")

        def write_default(out, **card):
            (out / "fused_musicnn.onnx").write_bytes(b"graph")
            (out / "fused_musicnn.json").write_text("{}")
            return {"genres": card["genres"]}

        def split_models(names, *, engines_dir, out_dir, fail=False):
            assert (engines_dir / "MTT_musicnn.onnx").read_bytes() == b"part"
            if fail:
                raise ModelError("split graphs differ")
            out_dir.mkdir()
            for suffix in (".frame.onnx", ".window.onnx", ".json"):
                (out_dir / f"fused_musicnn{suffix}").write_text("split")

        monkeypatch.setattr(streamclf.train.fused, "write_default", write_default)

        def run(*, fail: bool) -> None:
            monkeypatch.setattr(streamclf.train.split, "split_models",
                                lambda *a, **kw: split_models(*a, **kw, fail=fail))
            result = Result("map", oof=softmax(rng.standard_normal((len(windows.truth),
                                                                     len(FAMILIES)))))
            ship(result, HeadSpec(MUSICNN), windows, tracks, group_folds(tracks, k=3),
                 strength=1.0, out=tmp_path, dataset=tmp_path, summary=[],
                 compared_with="today")
        return run, tmp_path

    def test_a_failed_split_leaves_engines_unchanged(self, shipping):
        from streamclf.errors import ModelError

        run, out = shipping
        with pytest.raises(ModelError):
            run(fail=True)
        assert sorted(p.name for p in out.iterdir()) == ["MSD_musicnn.onnx", "MTT_musicnn.onnx"]

    def test_a_passed_split_moves_everything_in(self, shipping):
        run, out = shipping
        run(fail=False)
        assert all((out / name).is_file() for name in self.FILES)
        assert (out / "MTT_musicnn.onnx").read_bytes() == b"part"
        assert len(list(out.iterdir())) == 5  # the two parts, the graph, its card, split/


class TestCommand:
    """Bad input ends in one line, not a traceback."""

    @pytest.mark.parametrize(("argv", "needle"), [
        (["/nonexistent/set"], "cannot read dataset manifest"),
        ([str(GENRES), "--k", "40"], "cannot fill 40 folds"),
    ])
    def test_one_line_errors(self, capsys, argv, needle):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("residual_input", ["tags", "embedding"])
def test_split_graphs_carry_the_residual_head(rng, residual_input):
    """The incremental path's window part computes the same head as the full fused model."""
    from streamclf.features.framer import logmel_windows_for_file
    from streamclf.models.card import ENGINES_DIR
    from streamclf.models.musicnn import load_torch_from_onnx
    from streamclf.train.split import FrameNet, FusedWindowNet

    parts = [load_torch_from_onnx(ENGINES_DIR / f"{n}.onnx") for n in MUSICNN]
    dim = 100 if residual_input == "tags" else 400
    residual = {"input": residual_input, "weight": rng.normal(0, 1, (len(FAMILIES), dim)),
                "mean": rng.random(dim), "scale": 0.1 + rng.random(dim)}
    half, zeros = np.full(len(FAMILIES), 0.5), np.zeros(len(FAMILIES))  # does not saturate
    fused = FusedMusicnn(*parts, weight_mtt=half, weight_msd=half, bias=zeros,
                         residual=residual).eval()
    plain = FusedMusicnn(*parts, weight_mtt=half, weight_msd=half, bias=zeros).eval()
    clip = Path(__file__).resolve().parent.parent / "streamclf" / "data" / "clip.ogg"
    logmel = torch.as_tensor(np.stack([w.frames for w in logmel_windows_for_file(clip)[:2]]))
    with torch.no_grad():
        core = FrameNet(parts)(logmel)  # the whole window as context: its 181 core frames
        got = FusedWindowNet(fused)(logmel, core)[0]
        want = fused(logmel)[0]
        without = plain(logmel)[0]
    assert float((got - want).abs().max()) <= 1e-5
    assert float((want - without).abs().max()) > 1e-2  # the residual really is in the graph
