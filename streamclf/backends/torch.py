"""PyTorch eager on the CPU: for development and for comparison with the shipped engines only.

Needs the `train` extra. The network is the port in `streamclf.models.musicnn` with the weights
of the ONNX file itself (`streamclf.models.musicnn`), so torch runs exactly the parameters the
other engines run; a head trained by `streamclf train` is rebuilt by `streamclf.train.export`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from streamclf.backends.base import EngineInfo, InfoFields, check_batch
from streamclf.errors import EngineError
from streamclf.features.mel import N_MELS, WINDOW_FRAMES


def load_torch_model(path: Path):
    """The torch model of an ONNX file: a stock musicnn, or musicnn with a head trained by
    `streamclf train` (its card has a `head`), which needs the train extra to rebuild."""
    card_path = path.with_suffix(".json")
    if card_path.is_file() and "head" in json.loads(card_path.read_text()):
        from streamclf.train.export import load_torch_custom

        return load_torch_custom(path).eval()
    from streamclf.models.musicnn import load_torch_from_onnx

    return load_torch_from_onnx(path)


class TorchEngine(InfoFields):
    """The PyTorch port in eval mode, float32 on the CPU."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_batch: int = 32,
        threads: int | None = None,
        reason: str = "",
    ) -> None:
        try:
            import torch
        except ImportError as exc:
            msg = "torch engine needs the train extra (pip install 'streamclf[train]')"
            raise EngineError(msg) from exc
        path = Path(path)
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._model = load_torch_model(path)
        with torch.no_grad():
            tags, embedding = self._model(torch.zeros(1, WINDOW_FRAMES, N_MELS))
        self.info = EngineInfo(
            name="torch",
            device=f"cpu ({torch.get_num_threads()} threads)",
            precision="fp32",
            max_batch=max_batch,
            model=path.stem,
            embedding_dim=embedding.shape[1],
            reason=reason,
            n_tags=tags.shape[1],
        )

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = check_batch(batch, self.info.max_batch)
        with self._torch.inference_mode():
            tags, embedding = self._model(self._torch.from_numpy(batch))
        return {"tags": tags.numpy(), "embedding": embedding.numpy()}

    def close(self) -> None:
        self._model = None
