"""Read TensorFlow checkpoint bundles (V2 format) with numpy and the standard library only.

A bundle is `<prefix>.index`, a LevelDB-style sorted table that maps each tensor name to a
`BundleEntryProto` (dtype, shape, shard, offset, size, crc32c), and `<prefix>.data-0000k-of-0000n`,
the raw little-endian tensor bytes. Only the handful of protobuf fields that locate a tensor are
decoded, so no TensorFlow (nor protobuf) is needed to convert the musicnn checkpoints.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamclf.errors import ModelError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) + masked crc32c (4 bytes)
COMPRESSION_NONE = 0
COMPRESSION_SNAPPY = 1
HEADER_KEY = b""  # the BundleHeaderProto sits under the empty key

# tensorflow/core/framework/types.proto → numpy (little-endian)
DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    19: np.dtype("<f2"),
}


def _crc32c_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data`; pure Python, so only used on the small index blocks."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """Invert LevelDB's crc masking (which keeps crcs of data that holds crcs distinguishable)."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode one base-128 varint at `pos`; returns (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            msg = "truncated varint in checkpoint index"
            raise ModelError(msg)
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def parse_fields(buf: bytes) -> dict[int, list[int | bytes]]:
    """Split a protobuf message into {field number: [values]} (varints as int, others as bytes)."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            msg = f"unsupported protobuf wire type {wire} in checkpoint index"
            raise ModelError(msg)
        fields.setdefault(number, []).append(value)
    return fields


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the data shards (a decoded BundleEntryProto)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int


def parse_entry(name: str, value: bytes) -> TensorEntry:
    """Decode the BundleEntryProto fields that locate a tensor; sliced tensors are refused."""
    fields = parse_fields(value)
    if 7 in fields:
        msg = f"checkpoint tensor {name!r} is stored in slices, which this reader does not support"
        raise ModelError(msg)
    dtype_code = fields.get(1, [0])[0]
    if dtype_code not in DTYPES:
        msg = f"checkpoint tensor {name!r} has unsupported dtype code {dtype_code}"
        raise ModelError(msg)
    shape: tuple[int, ...] = ()
    if 2 in fields:
        dims = parse_fields(fields[2][0]).get(2, [])
        shape = tuple(parse_fields(dim).get(1, [0])[0] for dim in dims)
    return TensorEntry(
        name=name,
        dtype=DTYPES[dtype_code],
        shape=shape,
        shard_id=fields.get(3, [0])[0],
        offset=fields.get(4, [0])[0],
        size=fields.get(5, [0])[0],
    )


def read_block(data: bytes, offset: int, size: int) -> bytes:
    """Return the contents of the table block at (offset, size), checked against its crc32c."""
    end = offset + size
    if end + BLOCK_TRAILER_BYTES > len(data):
        msg = "checkpoint index block runs past the end of the file"
        raise ModelError(msg)
    contents = data[offset:end]
    compression = data[end]
    (masked,) = struct.unpack_from("<I", data, end + 1)
    if crc32c(data[offset : end + 1]) != unmask_crc(masked):
        msg = "checkpoint index block fails its crc32c check (corrupt .index file)"
        raise ModelError(msg)
    if compression == COMPRESSION_SNAPPY:
        msg = "checkpoint index uses snappy-compressed blocks, which this reader does not support"
        raise ModelError(msg)
    if compression != COMPRESSION_NONE:
        msg = f"checkpoint index block has unknown compression type {compression}"
        raise ModelError(msg)
    return contents


def block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of one table block, undoing the shared-prefix key compression."""
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    entries = []
    key = b""
    pos = 0
    while pos < limit:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        value_len, pos = read_varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def read_index(index_bytes: bytes) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a leveled table file: footer → index block → data blocks."""
    if len(index_bytes) < FOOTER_BYTES:
        msg = "checkpoint index is too short to hold a table footer"
        raise ModelError(msg)
    footer = index_bytes[-FOOTER_BYTES:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_BYTES - 8)
    if magic != TABLE_MAGIC:
        msg = "not a TensorFlow checkpoint index (bad table magic)"
        raise ModelError(msg)
    _meta_offset, pos = read_varint(footer, 0)
    _meta_size, pos = read_varint(footer, pos)
    index_offset, pos = read_varint(footer, pos)
    index_size, _ = read_varint(footer, pos)
    entries = []
    for _, handle in block_entries(read_block(index_bytes, index_offset, index_size)):
        offset, pos = read_varint(handle, 0)
        size, _ = read_varint(handle, pos)
        entries.extend(block_entries(read_block(index_bytes, offset, size)))
    return entries


class CheckpointReader:
    """Random access to the tensors of one checkpoint bundle.

    `prefix` is the path before `.index`. A folder means a bundle with an empty file stem inside
    it (`<folder>/.index`), which is how musicnn ships its checkpoints.
    """

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = os.path.join(prefix, "") if Path(prefix).is_dir() else str(prefix)
        index_path = Path(self.prefix + ".index")
        try:
            index_bytes = index_path.read_bytes()
        except OSError as exc:
            msg = f"cannot read checkpoint index {index_path}: {exc.strerror}"
            raise ModelError(msg) from exc
        self.entries: dict[str, TensorEntry] = {}
        self.num_shards = 1
        for key, value in read_index(index_bytes):
            if key == HEADER_KEY:
                self.num_shards = parse_fields(value).get(1, [1])[0]
            else:
                name = key.decode()
                self.entries[name] = parse_entry(name, value)
        self._shards: dict[int, bytes] = {}

    def shard_path(self, shard_id: int) -> Path:
        return Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """{tensor name: shape} for every tensor in the bundle (optimizer slots included)."""
        return {name: entry.shape for name, entry in self.entries.items()}

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as a new numpy array of its stored dtype and shape."""
        entry = self.entries.get(name)
        if entry is None:
            msg = f"checkpoint has no tensor {name!r}"
            raise ModelError(msg)
        shard = self._shard(entry.shard_id)
        expected = entry.dtype.itemsize * int(np.prod(entry.shape, dtype=np.int64))
        if entry.size != expected or entry.offset + entry.size > len(shard):
            msg = (
                f"checkpoint tensor {name!r} has an inconsistent size or offset (corrupt data file)"
            )
            raise ModelError(msg)
        flat = np.frombuffer(
            shard, dtype=entry.dtype, count=expected // entry.dtype.itemsize, offset=entry.offset
        )
        return flat.reshape(entry.shape).astype(entry.dtype.newbyteorder("="), copy=True)

    def _shard(self, shard_id: int) -> bytes:
        if shard_id not in self._shards:
            path = self.shard_path(shard_id)
            try:
                self._shards[shard_id] = path.read_bytes()
            except OSError as exc:
                msg = f"cannot read checkpoint data {path}: {exc.strerror}"
                raise ModelError(msg) from exc
        return self._shards[shard_id]
