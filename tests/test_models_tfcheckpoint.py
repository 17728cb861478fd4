"""The TensorFlow checkpoint reader: bundles written byte by byte here, and musicnn's own."""

from __future__ import annotations

import numpy as np
import pytest
from models_helpers import musicnn_wheel, write_bundle

from streamclf.errors import ModelError
from streamclf.models.tfcheckpoint import COMPRESSION_SNAPPY, CheckpointReader, crc32c


@pytest.fixture
def tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "conv2d/kernel": rng.standard_normal((7, 38, 1, 4)).astype(np.float32),
        "conv2d/kernel/Adam": rng.standard_normal((7, 38, 1, 4)).astype(np.float32),
        "conv2d/bias": rng.standard_normal(4).astype(np.float32),
        "batch_normalization/gamma": rng.standard_normal(1).astype(np.float32),
        "beta1_power": np.array(0.9, dtype=np.float32),
        "global_step": np.array(123456789012, dtype=np.int64),
        "half": rng.standard_normal((3, 2)).astype(np.float16),
        "flags": np.array([True, False, True]),
    }


class TestCheckpointReader:
    """Reading back what was written gives every tensor bit for bit, dtype and shape included."""

    @pytest.mark.parametrize("entries_per_block", [1, 3, 100])
    def test_round_trip(self, tmp_path, tensors, entries_per_block):
        write_bundle(tmp_path / "ckpt", tensors, entries_per_block=entries_per_block)
        reader = CheckpointReader(tmp_path / "ckpt")
        assert reader.shapes() == {name: value.shape for name, value in tensors.items()}
        for name, value in tensors.items():
            got = reader.read(name)
            assert got.dtype == value.dtype
            np.testing.assert_array_equal(got, value)

    def test_a_folder_means_the_empty_stem_musicnn_uses(self, tmp_path, tensors):
        write_bundle(f"{tmp_path}/", tensors)
        assert (tmp_path / ".index").is_file()
        np.testing.assert_array_equal(
            CheckpointReader(tmp_path).read("conv2d/bias"), tensors["conv2d/bias"]
        )

    def test_crc32c_known_answer(self):
        # RFC 3720 B.4: 32 bytes of zeros.
        assert crc32c(bytes(32)) == 0x8A9136AA

    def test_corrupt_index_fails_its_crc(self, tmp_path, tensors):
        write_bundle(tmp_path / "ckpt", tensors)
        index = bytearray((tmp_path / "ckpt.index").read_bytes())
        index[20] ^= 0x40
        (tmp_path / "ckpt.index").write_bytes(bytes(index))
        with pytest.raises(ModelError, match="crc32c"):
            CheckpointReader(tmp_path / "ckpt")

    def test_snappy_blocks_are_refused_clearly(self, tmp_path, tensors):
        write_bundle(tmp_path / "ckpt", tensors, compression=COMPRESSION_SNAPPY)
        with pytest.raises(ModelError, match="snappy"):
            CheckpointReader(tmp_path / "ckpt")

    def test_not_a_table(self, tmp_path):
        (tmp_path / "ckpt.index").write_bytes(bytes(100))
        with pytest.raises(ModelError, match="magic"):
            CheckpointReader(tmp_path / "ckpt")

    def test_missing_files(self, tmp_path, tensors):
        with pytest.raises(ModelError, match="cannot read checkpoint index"):
            CheckpointReader(tmp_path / "nothing")
        write_bundle(tmp_path / "ckpt", tensors)
        (tmp_path / "ckpt.data-00000-of-00001").unlink()
        with pytest.raises(ModelError, match="cannot read checkpoint data"):
            CheckpointReader(tmp_path / "ckpt").read("conv2d/bias")

    def test_truncated_data_and_unknown_names(self, tmp_path, tensors):
        write_bundle(tmp_path / "ckpt", tensors)
        data = tmp_path / "ckpt.data-00000-of-00001"
        data.write_bytes(data.read_bytes()[:-8])
        reader = CheckpointReader(tmp_path / "ckpt")
        last = max(reader.entries.values(), key=lambda e: e.offset).name
        with pytest.raises(ModelError, match="inconsistent size"):
            reader.read(last)
        with pytest.raises(ModelError, match="no tensor 'nope'"):
            reader.read("nope")


@pytest.mark.parametrize(
    ("name", "kernels"),
    [
        (
            "MTT_musicnn",
            {
                "conv2d/kernel": (7, 38, 1, 204),
                "conv2d_5/kernel": (7, 561, 1, 64),
                "dense/kernel": (1506, 200),
                "dense_1/kernel": (200, 50),
            },
        ),
        (
            "MSD_vgg",
            {
                "1CNN/kernel": (3, 3, 1, 128),
                "5CNN/kernel": (3, 3, 128, 128),
                "dense/kernel": (256, 50),
            },
        ),
    ],
)
def test_reads_the_musicnn_checkpoints(tmp_path, name, kernels):
    """The shipped bundles parse: the kernels have musicnn's shapes, Adam slots sit beside them."""
    import zipfile

    with zipfile.ZipFile(musicnn_wheel()) as whl:
        for suffix in (".index", ".data-00000-of-00001"):
            whl.extract(f"musicnn/{name}/{suffix}", tmp_path)
    reader = CheckpointReader(tmp_path / "musicnn" / name)
    shapes = reader.shapes()
    for kernel, shape in kernels.items():
        assert shapes[kernel] == shape
        assert shapes[f"{kernel}/Adam"] == shape
        value = reader.read(kernel)
        assert value.dtype == np.float32 and np.isfinite(value).all() and value.std() > 0
