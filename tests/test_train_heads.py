"""Heads and the trainer on small arrays: pooling semantics, balanced sampling, early stopping,
seeds."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from streamclf.train.heads import HEADS, AttentionHead, build_head
from streamclf.train.trainer import (
    Track,
    TrainConfig,
    class_balanced_weights,
    draw_segments,
    train_head,
)

pytestmark = pytest.mark.torch


def _tracks(
    rng: np.random.Generator,
    *,
    per_class: list[int],
    dim: int = 8,
    windows: int = 5,
    separation: float = 3.0,
) -> list[Track]:
    """Gaussian clusters, one per class: enough to check mechanics, not a stand-in for music."""
    centres = separation * rng.standard_normal((len(per_class), dim))
    return [
        Track((centres[c] + rng.standard_normal((windows, dim))).astype(np.float32), c)
        for c, n in enumerate(per_class)
        for _ in range(n)
    ]


class TestHeads:
    @pytest.mark.parametrize("kind", HEADS)
    def test_shapes_and_window_order_invariance(self, kind: str) -> None:
        head = build_head(kind, dim=8, n_classes=3, hidden=4, dropout=0.0).eval()
        x = torch.randn(2, 5, 8)
        with torch.no_grad():
            out, shuffled = head(x), head(x[:, torch.randperm(5)])
        assert out.shape == (2, 3)
        torch.testing.assert_close(out, shuffled)

    def test_attention_favours_the_windows_it_scores_high(self) -> None:
        head = AttentionHead(dim=2, n_classes=2, hidden=2).eval()
        with torch.no_grad():
            head.value.weight.copy_(torch.eye(2))
            head.value.bias.zero_()
            head.score.weight.copy_(torch.tensor([[10.0, 0.0]]))
            head.score.bias.zero_()
            head.classifier.weight.copy_(torch.eye(2))
            head.classifier.bias.zero_()
            loud, quiet = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
            logits = head(torch.cat([loud, quiet, quiet, quiet])[None])
        assert logits.argmax().item() == 0  # one high-scoring window outweighs three others

    def test_unknown_head(self) -> None:
        with pytest.raises(ValueError, match="unknown head"):
            build_head("svm", dim=2, n_classes=2, hidden=2, dropout=0.0)


class TestSampling:
    def test_every_class_gets_equal_mass(self) -> None:
        weights = class_balanced_weights([0, 0, 0, 0, 1, 2, 2])
        assert [
            weights[np.array([0, 0, 0, 0, 1, 2, 2]) == c].sum() for c in range(3)
        ] == pytest.approx([1 / 3] * 3)

    def test_segments_are_balanced_and_short_files_tile(self, rng: np.random.Generator) -> None:
        tracks = _tracks(rng, per_class=[9, 1], windows=6) + [Track(np.ones((2, 8), np.float32), 1)]
        x, y = draw_segments(tracks, count=4000, windows=4, rng=rng)
        assert x.shape == (4000, 4, 8)
        assert abs(np.mean(y == 0) - 0.5) < 0.05
        tiled = x[(x == 1).all(axis=(1, 2))]
        assert len(tiled) > 0  # the 2-window file was drawn and repeated to 4 windows


class TestTraining:
    def test_learns_separable_clusters(self, rng: np.random.Generator) -> None:
        tracks = _tracks(rng, per_class=[12, 12, 12])
        result = train_head(
            tracks[::2],
            tracks[1::2],
            n_classes=3,
            config=TrainConfig(head="linear", epochs=8, segment_windows=2),
        )
        assert result.history[result.best_epoch - 1]["val_accuracy"] > 0.9
        assert not result.head.training

    def test_stops_when_validation_stops_improving_and_keeps_the_best(
        self, rng: np.random.Generator
    ) -> None:
        """Validation labels that contradict training: its loss rises, training stops, best kept."""
        train = _tracks(rng, per_class=[6, 6])
        val = [Track(t.embedding, 1 - t.label) for t in train]
        result = train_head(
            train,
            val,
            n_classes=2,
            config=TrainConfig(head="mlp", epochs=200, patience=4, segment_windows=2),
        )
        assert result.epochs_run == result.best_epoch + 4 < 200
        x = torch.from_numpy(np.concatenate([t.embedding for t in val])[:, None])
        y = torch.from_numpy(np.concatenate([np.full(len(t.embedding), t.label) for t in val]))
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(result.head(x), y).item()
        assert loss == pytest.approx(result.history[result.best_epoch - 1]["val_loss"], rel=1e-5)

    @pytest.mark.parametrize("kind", HEADS)
    def test_same_seed_same_weights(self, rng: np.random.Generator, kind: str) -> None:
        tracks = _tracks(rng, per_class=[4, 4])
        config = TrainConfig(head=kind, hidden=8, epochs=1, seed=11)

        def weights(seed: int) -> list[np.ndarray]:
            head = train_head(
                tracks,
                tracks[:2],
                n_classes=2,
                config=TrainConfig(**{**config.__dict__, "seed": seed}),
            ).head
            return [p.detach().numpy().copy() for p in head.state_dict().values()]

        first, again, other = weights(11), weights(11), weights(12)
        assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
        assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
