"""Convert the musicnn 0.1.0 checkpoints into PyTorch weights, ONNX files and model cards.

`import_models(source, out_dir)` reads the TensorFlow bundles straight from the musicnn wheel
(or its extracted folder) with `tfcheckpoint`, maps every model variable onto the modules of
`streamclf.models.musicnn` (refusing missing, unexpected or mis-shaped variables), exports each
network to ONNX and checks it in ONNX Runtime against PyTorch before writing its card.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import structlog
import torch

from streamclf.errors import ModelError
from streamclf.models import card
from streamclf.models.musicnn import build_model
from streamclf.models.tfcheckpoint import CheckpointReader

log = structlog.get_logger(__name__)

ONNX_OPSET = 17
OPTIMIZER_VARIABLES = ("beta1_power", "beta2_power", "global_step")
OPTIMIZER_SUFFIXES = ("/Adam", "/Adam_1")
CHECKPOINT_FILES = (".index", ".data-00000-of-00001")
LICENSE_PATH = "musicnn-0.1.0.dist-info/LICENSE.md"
PARITY_SEED = 20190801
ONNX_TOLERANCE = 1e-4


def _bn(tf: str) -> dict[str, str]:
    return {
        "weight": f"{tf}/gamma",
        "bias": f"{tf}/beta",
        "running_mean": f"{tf}/moving_mean",
        "running_var": f"{tf}/moving_variance",
    }


def _layer(tf: str) -> dict[str, str]:
    return {"weight": f"{tf}/kernel", "bias": f"{tf}/bias"}


def _numbered(base: str, i: int) -> str:
    """tf.compat.v1.layers names the n-th unnamed layer of a kind `base`, `base_1`, `base_2`…"""
    return base if i == 0 else f"{base}_{i}"


def variable_map(name: str) -> dict[str, str]:
    """{torch parameter or buffer name: TF variable name} for model `name`, in TF creation order."""
    pairs: dict[str, str] = {}

    def add(module: str, names: dict[str, str]) -> None:
        pairs.update({f"{module}.{key}": tf for key, tf in names.items()})

    bn = iter(range(100))
    add("input_bn", _bn(_numbered("batch_normalization", next(bn))))
    if card.architecture_of(name) == "vgg":
        for i in range(5):
            add(f"convs.{i}", _layer(f"{i + 1}CNN"))
            add(f"bns.{i}", _bn(_numbered("batch_normalization", next(bn))))
        add("classifier", _layer("dense"))
        return pairs
    blocks = [f"timbral.{i}" for i in range(2)] + [f"temporal.{i}" for i in range(3)]
    blocks += [f"midend.{i}" for i in range(3)]
    for conv, block in enumerate(blocks):
        add(f"{block}.conv", _layer(_numbered("conv2d", conv)))
        add(f"{block}.bn", _bn(_numbered("batch_normalization", next(bn))))
    add("pool_bn", _bn(_numbered("batch_normalization", next(bn))))
    add("dense", _layer("dense"))
    add("dense_bn", _bn(_numbered("batch_normalization", next(bn))))
    add("classifier", _layer("dense_1"))
    return pairs


def is_optimizer_variable(tf_name: str) -> bool:
    """True for Adam slots and optimizer counters, which the checkpoints carry beside the model."""
    return tf_name in OPTIMIZER_VARIABLES or tf_name.endswith(OPTIMIZER_SUFFIXES)


def tf_to_torch(value: np.ndarray, *, target_shape: tuple[int, ...]) -> np.ndarray:
    """Re-lay a TF variable for PyTorch: kernels HWIO → OIHW (or OIW), dense [in, out] → [out, in].

    A midend kernel [7, C, 1, out] (a conv spanning all features) becomes a Conv1d [out, C, 7].
    """
    if value.ndim == 4:
        oihw = value.transpose(3, 2, 0, 1)
        return oihw[:, 0].transpose(0, 2, 1) if len(target_shape) == 3 else oihw
    if value.ndim == 2:
        return value.T
    return value


def load_state(reader: CheckpointReader, name: str) -> dict[str, torch.Tensor]:
    """The state dict of model `name` from a checkpoint, every model variable accounted for."""
    model = build_model(name)
    expected = model.state_dict()
    mapping = variable_map(name)
    available = {v for v in reader.shapes() if not is_optimizer_variable(v)}
    missing = sorted(set(mapping.values()) - available)
    extra = sorted(available - set(mapping.values()))
    if missing:
        msg = f"{name}: checkpoint lacks model variables {', '.join(missing)}"
        raise ModelError(msg)
    if extra:
        msg = f"{name}: checkpoint has unexpected model variables {', '.join(extra)}"
        raise ModelError(msg)
    state = {}
    for key, tf_name in mapping.items():
        target = tuple(expected[key].shape)
        value = np.ascontiguousarray(tf_to_torch(reader.read(tf_name), target_shape=target))
        if value.shape != target or value.dtype != np.float32:
            msg = (
                f"{name}: variable {tf_name} has shape {value.shape} {value.dtype} after "
                f"conversion, {key} needs {target} float32"
            )
            raise ModelError(msg)
        state[key] = torch.from_numpy(value)
    unmapped = (
        set(expected) - set(state) - {k for k in expected if k.endswith("num_batches_tracked")}
    )
    if unmapped:
        msg = f"{name}: no checkpoint variable for {', '.join(sorted(unmapped))}"
        raise ModelError(msg)
    return state


def load_torch_model(checkpoint_dir: str | Path, name: str) -> torch.nn.Module:
    """Model `name` in eval mode with the weights of the bundle in `checkpoint_dir`."""
    model = build_model(name)
    model.load_state_dict(load_state(CheckpointReader(checkpoint_dir), name), strict=False)
    return model


@contextmanager
def musicnn_package(source: str | Path) -> Iterator[Path]:
    """The `musicnn` package folder of a wheel (extracted to a temporary folder) or of a folder."""
    source = Path(source)
    if source.is_file():
        try:
            with (
                tempfile.TemporaryDirectory(prefix="musicnn-") as tmp,
                zipfile.ZipFile(source) as whl,
            ):
                whl.extractall(tmp)
                yield Path(tmp) / "musicnn"
        except zipfile.BadZipFile as exc:
            msg = f"{source} is not a wheel (zip) file"
            raise ModelError(msg) from exc
        return
    for candidate in (source / "musicnn", source):
        if (candidate / "configuration.py").is_file():
            yield candidate
            return
    msg = f"{source} is neither the musicnn 0.1.0 wheel nor a folder holding its musicnn package"
    raise ModelError(msg)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    """Write `model` as ONNX: input logmel [batch, 187, 96], outputs tags and embedding.

    The TorchScript exporter (dynamo=False) is used on purpose: for these plain conv/bn/pool
    graphs it writes one self-contained, byte-reproducible file with batch norm folded into the
    convolutions. The dynamo exporter gives the same numbers but keeps batch norm unfolded and
    writes the weights to a side file unless told otherwise (docs/models.md).
    """
    example = torch.zeros(2, card.WINDOW_FRAMES, card.N_MELS)
    with warnings.catch_warnings():  # legacy-exporter deprecation and constant-folding notes
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[card.INPUT_NAME],
            output_names=list(card.OUTPUT_NAMES),
            dynamic_axes={n: {0: "batch"} for n in (card.INPUT_NAME, *card.OUTPUT_NAMES)},
        )


def parity_batch(batch: int = 8) -> np.ndarray:
    """Log-mel-like inputs (values in musicnn's 0…~4 range) for the ONNX-vs-torch check."""
    rng = np.random.default_rng(PARITY_SEED)
    return (4.0 * rng.random((batch, card.WINDOW_FRAMES, card.N_MELS))).astype(np.float32)


Predict = Callable[[np.ndarray], list[np.ndarray]]


def torch_predictor(model: torch.nn.Module) -> Predict:
    def predict(logmel: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in model(torch.from_numpy(logmel))]

    return predict


def onnx_predictor(onnx_path: Path) -> Predict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return lambda logmel: session.run(list(card.OUTPUT_NAMES), {card.INPUT_NAME: logmel})


def max_abs_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))


def reference_errors(predict: Predict, references: Path, name: str) -> dict[str, float]:
    """Largest absolute errors against the TensorFlow fixtures of tools/make_references.py."""
    with np.load(references / "logmel.npz") as logmel, np.load(references / f"{name}.npz") as ref:
        batch = logmel["batch"]
        tags, embedding = predict(batch)
        return {
            "tags_max_abs": float(np.abs(tags - ref["taggram"][: len(batch)]).max()),
            "embedding_max_abs": float(np.abs(embedding - ref["embedding"][: len(batch)]).max()),
            "patches": len(batch),
        }


def import_models(
    source: str | Path,
    out_dir: str | Path,
    names: Iterable[str] | None = None,
    *,
    references: str | Path | None = None,
) -> list[Path]:
    """Convert musicnn models from the 0.1.0 wheel (or its extracted folder) into `out_dir`.

    Writes `<name>.onnx` and `<name>.json` per model and `LICENSE-musicnn.txt`; returns the
    card paths. `references` is an optional folder of TensorFlow fixtures (`logmel.npz`,
    `<name>.npz`) whose errors are recorded in the cards. Raises ModelError on unusable input.
    """
    names = list(names or card.MODEL_NAMES)
    unknown = [n for n in names if n not in card.MODEL_NAMES]
    if unknown:
        msg = f"unknown model {unknown[0]!r}; known: {', '.join(card.MODEL_NAMES)}"
        raise ModelError(msg)
    source = Path(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel_sha256 = sha256_of(source) if source.is_file() else None
    cards = []
    with musicnn_package(source) as package:
        license_file = package.parent / LICENSE_PATH
        if not license_file.is_file():
            msg = f"{source} lacks {LICENSE_PATH}; the musicnn licence must travel with the models"
            raise ModelError(msg)
        license_text = license_file.read_text()
        (out_dir / card.LICENSE_FILE).write_text(license_text)
        for name in names:
            checkpoint_dir = package / name
            model = load_torch_model(checkpoint_dir, name)
            onnx_path = out_dir / f"{name}.onnx"
            export_onnx(model, onnx_path)
            in_torch, in_onnx = torch_predictor(model), onnx_predictor(onnx_path)
            logmel = parity_batch()
            parity = {"onnx_vs_torch_max_abs": max_abs_error(in_onnx(logmel), in_torch(logmel))}
            if parity["onnx_vs_torch_max_abs"] > ONNX_TOLERANCE:
                error = parity["onnx_vs_torch_max_abs"]
                msg = f"{name}: ONNX export differs from PyTorch by {error:.2g}"
                raise ModelError(msg)
            if references is not None:
                parity["reference"] = "tensorflow musicnn 0.1.0 on streamclf/data/clip.ogg"
                parity["torch_vs_tensorflow"] = reference_errors(in_torch, Path(references), name)
                parity["onnx_vs_tensorflow"] = reference_errors(in_onnx, Path(references), name)
            checkpoint = {f: sha256_of(checkpoint_dir / f) for f in CHECKPOINT_FILES}
            document = card.card_document(
                name=name,
                wheel_sha256=wheel_sha256,
                checkpoint_sha256=checkpoint,
                license_text=license_text,
                onnx_path=onnx_path,
                parity=parity,
            )
            card_path = out_dir / f"{name}.json"
            card_path.write_text(json.dumps(document, indent=2) + "\n")
            log.info(
                "model_imported",
                model=name,
                onnx=str(onnx_path),
                onnx_bytes=onnx_path.stat().st_size,
                parity=parity,
            )
            cards.append(card_path)
    return cards
