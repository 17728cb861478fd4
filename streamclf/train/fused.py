"""The default model: MTT_musicnn and MSD_musicnn on the same log-mel in one ONNX graph (torch).

Outputs: `tags` [B, 14], a calibrated distribution over the genre families
(streamclf.models.taxonomy.FAMILIES), so the daemon's genre logic runs unchanged with the card's
`labels` = `genres` = the families; `embedding` [B, 400] (MTT's then MSD's penultimate layer);
`mtt_tags` and `msd_tags` [B, 50], each tagger's own probabilities.

Calibration (docs/model-quality.md): per family, z = a·logit(MTT score) + b·logit(MSD score) + c
over the zero-shot family scores, softmax over the families; a, b, c are fitted (class-balanced
log-loss, light L2) on the `calib` split of the genre set only. A family with no calib clips
keeps the mean fitted a, b, c; a family a tagger has no tag for gets weight 0 from it.
A head chosen by `streamclf.train.select` may add a linear correction over the 100 tag
probabilities or the 400-d embedding (the card's `calibration.residual`); `write_default`
exports either, and `streamclf.train.split` rebuilds its split graphs from the card.

    python -m streamclf.train.fused --dataset datasets/genres --out engines
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streamclf.evaluate import FUSED_MODEL, clip_windows, load_manifest, run_outputs
from streamclf.models import card
from streamclf.models.musicnn import load_torch_from_onnx
from streamclf.models.taxonomy import (
    FAMILIES,
    MSD_FAMILY_TAGS,
    MTT_FAMILY_TAGS,
    PROB_EPS,
    calibrated_probs,
    family_scores,
    logit,
    vocabulary_matrix,
)

L2 = 1e-2
OUTPUTS = ("tags", "embedding", "mtt_tags", "msd_tags")


class FusedMusicnn(nn.Module):
    """Both taggers, the family mapping and the calibration as one graph."""

    def __init__(self, mtt: nn.Module, msd: nn.Module, *, weight_mtt: np.ndarray,
                 weight_msd: np.ndarray, bias: np.ndarray, residual: dict | None = None) -> None:
        super().__init__()
        self.mtt, self.msd = mtt, msd
        self.residual_input = residual["input"] if residual else None
        buffers = [("map_mtt", vocabulary_matrix("MTT")), ("map_msd", vocabulary_matrix("MSD")),
                   ("weight_mtt", weight_mtt), ("weight_msd", weight_msd), ("bias", bias)]
        if residual:
            buffers += [(f"residual_{k}", residual[k]) for k in ("weight", "mean", "scale")]
        for name, value in buffers:
            self.register_buffer(name, torch.as_tensor(np.asarray(value, np.float32)))

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mtt_tags, mtt_emb = self.mtt(logmel)
        msd_tags, msd_emb = self.msd(logmel)
        return (*self.combine(mtt_tags, mtt_emb, msd_tags, msd_emb), mtt_tags, msd_tags)

    def combine(self, mtt_tags: torch.Tensor, mtt_emb: torch.Tensor, msd_tags: torch.Tensor,
                msd_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(family distribution, joint embedding) from the two taggers' outputs (the split
        graphs' per-window part reuses it)."""
        embedding = torch.cat([mtt_emb, msd_emb], dim=1)
        z = (self.weight_mtt * self._logit_scores(mtt_tags, self.map_mtt)
             + self.weight_msd * self._logit_scores(msd_tags, self.map_msd) + self.bias)
        if self.residual_input is not None:
            tags = torch.cat([mtt_tags, msd_tags], dim=1)
            x = tags if self.residual_input == "tags" else embedding
            z = z + ((x - self.residual_mean) / self.residual_scale) @ self.residual_weight.T
        return torch.softmax(z, dim=1), embedding

    @staticmethod
    def _logit_scores(tags: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
        p = (tags.unsqueeze(1) * mapping.unsqueeze(0)).amax(dim=2).clamp(PROB_EPS, 1 - PROB_EPS)
        return torch.log(p) - torch.log1p(-p)


def fit_calibration(*, mtt_scores: np.ndarray, msd_scores: np.ndarray, truth: np.ndarray
                    ) -> dict[str, np.ndarray]:
    """Per-family a, b, c (see module doc) from family scores [N, F] and true families [N]."""
    reach_mtt, reach_msd = vocabulary_matrix("MTT").any(1), vocabulary_matrix("MSD").any(1)
    present = np.bincount(truth, minlength=len(FAMILIES)) > 0
    x_mtt = torch.as_tensor(logit(mtt_scores) * reach_mtt, dtype=torch.float64)
    x_msd = torch.as_tensor(logit(msd_scores) * reach_msd, dtype=torch.float64)
    y = torch.as_tensor(truth)
    counts = np.bincount(truth, minlength=len(FAMILIES)).astype(np.float64)
    sample_weight = torch.as_tensor(1.0 / counts[truth] / present.sum())
    keep = torch.as_tensor(present)
    params = torch.zeros(3, len(FAMILIES), dtype=torch.float64)
    params[:2] = 1.0
    params.requires_grad_(True)
    optimiser = torch.optim.LBFGS([params], max_iter=500, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        optimiser.zero_grad()
        a, b, c = params
        z = (a * x_mtt + b * x_msd + c)[:, keep]
        target = torch.cumsum(keep.long(), 0)[y] - 1  # index among the present families
        nll = nn.functional.cross_entropy(z, target, reduction="none")
        penalty = ((params[:2] - 1.0) ** 2 + params[2:] ** 2)[:, keep].sum()
        loss = (sample_weight * nll).sum() + L2 * penalty
        loss.backward()
        return loss

    optimiser.step(loss_fn)
    a, b, c = params.detach().numpy().copy()
    for values in (a, b, c):
        values[~present] = values[present].mean()
    return {"weight_mtt": (a * reach_mtt).astype(np.float32),
            "weight_msd": (b * reach_msd).astype(np.float32), "bias": c.astype(np.float32)}


def export_fused(model: nn.Module, path: Path) -> None:
    """TorchScript ONNX export (as the importer does): input logmel, the four outputs."""
    example = torch.zeros(2, card.WINDOW_FRAMES, card.N_MELS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=17,
                          input_names=[card.INPUT_NAME], output_names=list(OUTPUTS),
                          dynamic_axes={n: {0: "batch"} for n in (card.INPUT_NAME, *OUTPUTS)})


def fused_card(*, onnx_path: Path, calibration: dict, engines: Path, trained_on: str,
               builder: str, genres: Sequence[str] = FAMILIES,
               validation: dict | None = None) -> dict:
    """The model card: the single models' input spec and licence, the families as labels, the
    families it may publish as genres (`validation` says how they were chosen)."""
    parts = {n: json.loads((engines / f"{n}.json").read_text())
             for n in ("MTT_musicnn", "MSD_musicnn")}
    base = parts["MSD_musicnn"]
    document = {
        "schema": card.CARD_SCHEMA, "name": FUSED_MODEL, "architecture": "fused musicnn",
        "training_data": {"dataset": "MagnaTagATune + Million Song Dataset (Last.fm tags); "
                                     f"head fitted on {trained_on}", "tags": len(FAMILIES)},
        "source": {"parts": {n: {"onnx_sha256": d["onnx"]["sha256"]} for n, d in parts.items()},
                   "package": "musicnn", "version": card.MUSICNN_VERSION, "builder": builder},
        "license": base["license"], "input": base["input"],
        "outputs": {
            "tags": {"dtype": "float32", "shape": ["batch", len(FAMILIES)], "activation": "softmax",
                     "description": "calibrated distribution over the genre families"},
            "embedding": {"dtype": "float32", "shape": ["batch", 400],
                          "description": "MTT_musicnn then MSD_musicnn penultimate layer"},
            "mtt_tags": {"dtype": "float32", "shape": ["batch", 50],
                         "labels": list(card.MTT_LABELS)},
            "msd_tags": {"dtype": "float32", "shape": ["batch", 50],
                         "labels": list(card.MSD_LABELS)},
        },
        "labels": list(FAMILIES), "genres": list(genres),
        "taxonomy": {"MTT": MTT_FAMILY_TAGS, "MSD": MSD_FAMILY_TAGS},
        "calibration": calibration,
        "onnx": {"file": onnx_path.name, "sha256": card.sha256_file(onnx_path),
                 "bytes": onnx_path.stat().st_size},
    }
    if validation is not None:
        document["validation"] = validation
    return document


def write_default(out: Path, *, params: dict[str, np.ndarray], calibration: dict,
                  residual: dict | None = None, **card_fields) -> dict:
    """Export the fused graph with these head parameters to `out` and write its card."""
    engines = card.ENGINES_DIR
    model = FusedMusicnn(load_torch_from_onnx(engines / "MTT_musicnn.onnx"),
                         load_torch_from_onnx(engines / "MSD_musicnn.onnx"), **params,
                         residual=residual)
    onnx_path = out / f"{FUSED_MODEL}.onnx"
    export_fused(model, onnx_path)
    document = fused_card(onnx_path=onnx_path, calibration=calibration, engines=engines,
                          **card_fields)
    (out / f"{FUSED_MODEL}.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


def build(dataset: Path, out: Path, *, unknown_threshold: float) -> dict:
    """Fit the calibration on the calib split, export the graph and write its card."""
    clips = [c for c in load_manifest(dataset) if c.split == "calib"]
    frames, truth, _ = clip_windows(clips)
    tags = {n: run_outputs(card.ENGINES_DIR / f"{n}_musicnn.onnx", frames)["tags"]
            for n in ("MTT", "MSD")}
    scores = {n: family_scores(tags=t, mapping=vocabulary_matrix(n)) for n, t in tags.items()}
    params = fit_calibration(mtt_scores=scores["MTT"], msd_scores=scores["MSD"], truth=truth)
    calib_probs = calibrated_probs(mtt_scores=scores["MTT"], msd_scores=scores["MSD"], **params)
    calibration = {
        "method": "per-family Platt scaling of the two taggers' zero-shot family logits, softmax",
        "fitted_on": f"{dataset.name} split calib: {len(clips)} clips, {len(frames)} windows",
        "calib_accuracy": float((calib_probs.argmax(1) == truth).mean()),
        "unknown_threshold": unknown_threshold,
        **{k: [round(float(v), 6) for v in vals] for k, vals in params.items()},
    }
    return write_default(out, params=params, calibration=calibration,
                         trained_on=f"{dataset.name} (calib split)",
                         builder="python -m streamclf.train.fused")


def main() -> None:
    parser = argparse.ArgumentParser(description="Fit and export the fused default model.")
    parser.add_argument("--dataset", type=Path, default=Path("datasets/genres"))
    parser.add_argument("--out", type=Path, default=card.ENGINES_DIR)
    parser.add_argument("--unknown-threshold", type=float, default=0.35,
                        help="published as unknown under this (docs/model-quality.md)")
    args = parser.parse_args()
    document = build(args.dataset, args.out, unknown_threshold=args.unknown_threshold)
    print(json.dumps(document["calibration"], indent=1))


if __name__ == "__main__":
    main()
