"""Split a musicnn model into a per-frame and a per-window ONNX graph with the same weights.

musicnn's timbral blocks (7×38 and 7×67 convolutions, ≈ 80 % of the arithmetic) see 7 frames,
so a frame's timbral features do not depend on the window it sits in — except for the 3 frames
at each window edge, where the window's zero padding enters. Everything after them does:
the temporal blocks' 128/64/32-frame 'same' convolutions see the padding over most of the
window, the mid-end convolves the temporal features, the back-end pools the whole window.

- frame graph: `context` [B, T + 6, 96] raw log-mel → `timbral` [B, T, 408], the timbral
  features of the T middle frames (valid in time: no padding enters).
- window graph: `logmel` [B, 187, 96] and `core` [B, 181, 408] (the frame graph's features of
  window frames 3 … 183) → `tags` [B, 50], `embedding` [B, 200]. It recomputes the 3 + 3 edge
  frames with the zero padding, then runs temporal blocks, mid-end and back-end.
- the fused default model (MTT + MSD musicnn and a calibrated head, `streamclf.train.fused`)
  splits the same way, with both taggers' features side by side: 816 per frame, outputs
  `tags` [B, 14] and `embedding` [B, 400].

The weights are read from the shipped `engines/<name>.onnx` (`load_torch_from_onnx`), and the
composition is checked against that file in ONNX Runtime before anything is written.
The VGG models are not split: every layer pads, and each stride-2 pooling ties the frame grid
to the window start, so they run full windows (docs/incremental.md).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from torch import nn

from streamclf.errors import ModelError
from streamclf.models import card
from streamclf.models.importer import ONNX_OPSET, parity_batch, sha256_of
from streamclf.models.musicnn import Musicnn, load_torch_from_onnx

log = structlog.get_logger(__name__)

CONTEXT_FRAMES = 3  # timbral receptive field 7 = 3 + 1 + 3
CORE_FRAMES = card.WINDOW_FRAMES - 2 * CONTEXT_FRAMES  # 181 frames whose features are reusable
SPLIT_DIR = card.ENGINES_DIR / "split"
# Largest |split − full| per output. A fused head weighs all 400 embedding values into each
# family probability, so their float32 rounding (≤ 1.2e-6 each, docs/incremental.md) adds up
# to ~2e-5 there; 1e-4 is the project's fp32 tolerance across engines and 500× below the
# 0.05 steps of any genre threshold. The embedding itself is held to 1e-5.
SPLIT_TOLERANCE = {"tags": 1e-4, "embedding": 1e-5}
SPLIT_SCHEMA = 1
FUSED = "fused_musicnn"
SPLITTABLE = ("MTT_musicnn", "MSD_musicnn", FUSED)


class PoolFirstBlock(nn.Module):
    """A timbral or temporal block with its frequency max taken before relu and batch norm.

    relu is monotonic, and the batch norm is a per-channel affine map whose sign decides
    whether it keeps max or min; a channel with a negative scale takes the max of its negated
    conv (= −min), so `bn(relu(conv(x))).amax(bands) == bn(relu(s · amax(s · conv(x))))` with
    s = ±1 — and the memory-bound relu and bn run on [B, C, T], not on [B, C, T, bands].
    x [B, 1, T, 96] → [B, C, T − kernel + 1 + padding].
    """

    def __init__(self, block: nn.Module, *, pad_frames: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        bn, conv = block.bn, block.conv
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        sign = torch.where(scale < 0, -1.0, 1.0)
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size)
        self.conv.weight.data = conv.weight.detach() * sign[:, None, None, None]
        self.conv.bias.data = conv.bias.detach() * sign
        self.register_buffer("sign", sign[None, :, None])
        self.register_buffer("scale", scale[None, :, None])
        self.register_buffer("shift", (bn.bias - bn.running_mean * scale).detach()[None, :, None])
        self.pad_frames = pad_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad_frames):
            x = F.pad(x, (0, 0, *self.pad_frames))
        return F.relu(self.conv(x).amax(dim=3) * self.sign) * self.scale + self.shift


def pool_first(model: Musicnn) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The timbral and temporal blocks of `model` as PoolFirstBlocks."""
    timbral = nn.ModuleList(PoolFirstBlock(b) for b in model.timbral)
    temporal = nn.ModuleList(PoolFirstBlock(b, pad_frames=b.pad_frames) for b in model.temporal)
    return timbral, temporal


class FrameNet(nn.Module):
    """Input batch norm + both timbral blocks of each part, valid in time.

    context [B, T + 6, 96] → timbral [B, T, 408 · parts] (frame-major, for a per-frame ring).
    """

    def __init__(self, parts: list[Musicnn]) -> None:
        super().__init__()
        self.input_bns = nn.ModuleList(m.input_bn for m in parts)
        self.timbral = nn.ModuleList(pool_first(m)[0] for m in parts)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        x = context.unsqueeze(1)
        features = [block(bn(x)) for bn, blocks in zip(self.input_bns, self.timbral, strict=True)
                    for block in blocks]
        return torch.cat(features, dim=1).transpose(1, 2)


class WindowNet(nn.Module):
    """Edge frames, temporal blocks, mid-end and back-end of one window.

    logmel [B, 187, 96], core [B, 181, 408] → (tags [B, 50], embedding [B, 200]).
    """

    def __init__(self, model: Musicnn) -> None:
        super().__init__()
        self.model = model
        self.timbral, self.temporal = pool_first(model)

    def forward(self, logmel: torch.Tensor,
                core: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.model.input_bn(logmel.unsqueeze(1))  # [B, 1, 187, 96]
        padded = F.pad(x, (0, 0, CONTEXT_FRAMES, CONTEXT_FRAMES))
        span = 3 * CONTEXT_FRAMES  # the rows that produce the 3 edge frames of one side
        edges = torch.cat([padded[:, :, :span], padded[:, :, -span:]], dim=0)  # [2B, 1, 9, 96]
        edge_features = torch.cat([block(edges) for block in self.timbral], dim=1)  # [2B, 408, 3]
        head, tail = edge_features.chunk(2, dim=0)
        timbral = torch.cat([head, core.transpose(1, 2), tail], dim=2)  # [B, 408, 187]
        frontend = torch.cat([timbral] + [block(x) for block in self.temporal], dim=1)
        return self.model.head(frontend)


class FusedWindowNet(nn.Module):
    """The default fused model's window part: each tagger's WindowNet, then the fused head.

    logmel [B, 187, 96], core [B, 181, 816] (MTT's 408 features, then MSD's) →
    (tags [B, 14], embedding [B, 400]).
    """

    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        self.fused = fused
        self.parts = nn.ModuleList([WindowNet(fused.mtt), WindowNet(fused.msd)])

    def forward(self, logmel: torch.Tensor,
                core: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.fused
        dim = core.shape[2] // 2
        (mtt_tags, mtt_emb), (msd_tags, msd_emb) = (
            part(logmel, c) for part, c in zip(self.parts, core.split(dim, dim=2), strict=True))
        return f.combine(mtt_tags, mtt_emb, msd_tags, msd_emb)


def load_source(name: str, engines_dir: Path) -> tuple[nn.Module, list[Musicnn]]:
    """The shipped model `name` in torch with the weights of its ONNX file, and its musicnn parts.

    The fused model is rebuilt from the MTT and MSD files its card names (sha256 checked) and
    the head its card records (calibration and, where chosen, a residual over the tags or
    embeddings); `check_split` then compares with the fused file itself.
    """
    if name != FUSED:
        model = load_torch_from_onnx(engines_dir / f"{name}.onnx")
        return model, [model]
    from streamclf.train.fused import FusedMusicnn

    document = json.loads((engines_dir / f"{name}.json").read_text())
    parts = []
    for part, source in document["source"]["parts"].items():
        path = engines_dir / f"{part}.onnx"
        if sha256_of(path) != source["onnx_sha256"]:
            msg = f"{name} was fused from another {path.name} (sha256 differs)"
            raise ModelError(msg)
        parts.append(load_torch_from_onnx(path))
    calibration = {k: np.asarray(document["calibration"][k], np.float32)
                   for k in ("weight_mtt", "weight_msd", "bias")}
    residual = document["calibration"].get("residual")  # a head chosen by streamclf.train.select
    return FusedMusicnn(*parts, **calibration, residual=residual).eval(), parts


def export_split(model: nn.Module, parts: list[Musicnn], frame_path: Path,
                 window_path: Path) -> None:
    """Write the frame and window graphs of `model` (dynamic batch; dynamic frames for the
    first)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", UserWarning)  # constant-folding notes
        # the TorchScript exporter, as the importer's
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            FrameNet(parts).eval(), (torch.zeros(2, 10 + 2 * CONTEXT_FRAMES, card.N_MELS),),
            str(frame_path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["context"], output_names=["timbral"],
            dynamic_axes={"context": {0: "batch", 1: "context_frames"},
                          "timbral": {0: "batch", 1: "frames"}},
        )
        window = (WindowNet(model) if model is parts[0] else FusedWindowNet(model)).eval()
        example = (torch.zeros(2, card.WINDOW_FRAMES, card.N_MELS),
                   torch.zeros(2, CORE_FRAMES, timbral_dim(parts)))
        torch.onnx.export(
            window, example, str(window_path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["logmel", "core"], output_names=list(card.OUTPUT_NAMES),
            dynamic_axes={n: {0: "batch"} for n in ("logmel", "core", *card.OUTPUT_NAMES)},
        )


def timbral_dim(parts: list[Musicnn]) -> int:
    return sum(block.conv.out_channels for m in parts for block in m.timbral)


def split_predict(frame_path: Path, window_path: Path, logmel: np.ndarray) -> list[np.ndarray]:
    """tags, embedding of windows [B, 187, 96] through the two graphs in ONNX Runtime."""
    import onnxruntime as ort

    frame = ort.InferenceSession(str(frame_path), providers=["CPUExecutionProvider"])
    window = ort.InferenceSession(str(window_path), providers=["CPUExecutionProvider"])
    (core,) = frame.run(None, {"context": logmel})
    return window.run(list(card.OUTPUT_NAMES), {"logmel": logmel, "core": core})


def check_split(full_path: Path, frame_path: Path, window_path: Path) -> dict[str, float]:
    """Largest |split − full| of each output on the importer's parity batch, in ORT."""
    import onnxruntime as ort

    logmel = parity_batch()
    full = ort.InferenceSession(str(full_path), providers=["CPUExecutionProvider"])
    want = full.run(list(card.OUTPUT_NAMES), {card.INPUT_NAME: logmel})
    got = split_predict(frame_path, window_path, logmel)
    return {name: float(np.abs(g - w).max())
            for name, g, w in zip(card.OUTPUT_NAMES, got, want, strict=True)}


def split_models(names: list[str] | None = None, *, out_dir: Path = SPLIT_DIR,
                 engines_dir: Path = card.ENGINES_DIR) -> list[Path]:
    """Split the shipped musicnn models into `out_dir`; returns the split cards written.

    Each `<name>.json` records the sha256 of the full model it was cut from, so the runtime can
    refuse a split that no longer matches the model it stands in for.
    """
    names = list(names or SPLITTABLE)
    cards = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name not in SPLITTABLE:
            msg = f"{name} cannot be split (only {', '.join(SPLITTABLE)}: see docs/incremental.md)"
            raise ModelError(msg)
        full_path = engines_dir / f"{name}.onnx"
        model, parts = load_source(name, engines_dir)
        frame_path, window_path = out_dir / f"{name}.frame.onnx", out_dir / f"{name}.window.onnx"
        export_split(model, parts, frame_path, window_path)
        errors = check_split(full_path, frame_path, window_path)
        over = [f"{output} by {error:.2g} (limit {SPLIT_TOLERANCE[output]:g})"
                for output, error in errors.items() if error > SPLIT_TOLERANCE[output]]
        if over:
            msg = f"{name}: split graphs differ from {full_path.name}: {', '.join(over)}"
            raise ModelError(msg)
        document = {
            "schema": SPLIT_SCHEMA,
            "model": name,
            "full_sha256": sha256_of(full_path),
            "frame": {"file": frame_path.name, "sha256": sha256_of(frame_path)},
            "window": {"file": window_path.name, "sha256": sha256_of(window_path)},
            "context_frames": CONTEXT_FRAMES,
            "core_frames": CORE_FRAMES,
            "timbral_dim": timbral_dim(parts),
            "split_vs_full_max_abs": errors,
        }
        card_path = out_dir / f"{name}.json"
        card_path.write_text(json.dumps(document, indent=2) + "\n")
        log.info("model_split", model=name, max_abs=errors,
                 frame_bytes=frame_path.stat().st_size, window_bytes=window_path.stat().st_size)
        cards.append(card_path)
    return cards


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m streamclf.train.split",
        description="Cut the shipped musicnn models into the frame and window graphs of "
                    "incremental inference (docs/incremental.md).")
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"models to split (default: all of {', '.join(SPLITTABLE)})")
    parser.add_argument("--out", type=Path, default=SPLIT_DIR, help=f"default: {SPLIT_DIR}")
    args = parser.parse_args(argv)
    try:
        split_models(args.models or None, out_dir=args.out)
    except ModelError as exc:
        parser.exit(exc.exit_code, f"streamclf: {exc}\n")


if __name__ == "__main__":
    main()
