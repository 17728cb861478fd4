"""Helpers for the model tests: where the musicnn wheel and the TF fixtures are, and a tiny
TensorFlow checkpoint *writer*, so the reader is tested on bundles built byte by byte here."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from streamclf.models.tfcheckpoint import DTYPES, TABLE_MAGIC, crc32c

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "musicnn"
CLIP = REPO / "streamclf" / "data" / "clip.ogg"
MODEL_NAMES = ("MTT_musicnn", "MSD_musicnn", "MTT_vgg", "MSD_vgg")
TAG_TOLERANCE = 1e-4
EMBEDDING_TOLERANCE = 1e-4
# The wheel is not committed; tests that convert the real checkpoints look for it here.
WHEEL_CANDIDATES = (
    os.environ.get("STREAMCLF_MUSICNN_WHEEL", ""),
    str(REPO / ".whl" / "musicnn-0.1.0-py3-none-any.whl"),
)


def musicnn_wheel() -> Path:
    """The musicnn 0.1.0 wheel, or skip the test that needs it."""
    for candidate in WHEEL_CANDIDATES:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.skip("musicnn 0.1.0 wheel not found (set STREAMCLF_MUSICNN_WHEEL or put it in .whl/)")


def tf_reference(name: str) -> dict[str, np.ndarray]:
    """The TensorFlow taggram and embedding of model `name` on the clip, all patches."""
    with np.load(FIXTURES / f"{name}.npz") as ref:
        return {key: ref[key] for key in ref.files}


def tf_logmel() -> np.ndarray:
    """musicnn's own batch_data patches of the clip (the first few), float32 [P, 187, 96]."""
    with np.load(FIXTURES / "logmel.npz") as ref:
        return ref["batch"]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _block(entries: list[tuple[bytes, bytes]], compression: int) -> bytes:
    """A table block with prefix-compressed keys, one restart point, and its trailer."""
    body = bytearray()
    previous = b""
    for key, value in entries:
        shared = len(os.path.commonprefix([previous, key]))
        body += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        body += key[shared:] + value
        previous = key
    body += struct.pack("<II", 0, 1)
    kind = bytes([compression])
    return bytes(body) + kind + struct.pack("<I", _mask(crc32c(bytes(body) + kind)))


def write_bundle(
    prefix: str | Path,
    tensors: dict[str, np.ndarray],
    *,
    entries_per_block: int = 2,
    compression: int = 0,
) -> None:
    """Write `tensors` as a V2 checkpoint bundle (<prefix>.index + one data shard)."""
    codes = {dtype: code for code, dtype in DTYPES.items()}
    data = bytearray()
    records = [(b"", _field(1, 1) + _field(3, _field(1, 1)))]  # header: 1 shard, producer 1
    for name in sorted(tensors):
        array = np.array(tensors[name], order="C")
        little = array.astype(array.dtype.newbyteorder("<"))
        shape = b"".join(_field(2, _field(1, dim)) for dim in array.shape)
        entry = _field(1, codes[little.dtype]) + _field(2, shape) + _field(4, len(data))
        entry += _field(5, little.nbytes)
        records.append((name.encode(), entry))
        data += little.tobytes()
    index = bytearray()
    handles = []

    def handle_of(block: bytes) -> bytes:
        return _varint(len(index)) + _varint(len(block) - 5)

    for start in range(0, len(records), entries_per_block):
        chunk = records[start : start + entries_per_block]
        block = _block(chunk, compression)
        handles.append((chunk[-1][0], handle_of(block)))
        index += block
    meta_block, index_block = _block([], 0), _block(handles, 0)
    meta_handle = handle_of(meta_block)
    index += meta_block
    index_handle = handle_of(index_block)
    index += index_block
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    Path(f"{prefix}.index").write_bytes(bytes(index) + footer)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))
