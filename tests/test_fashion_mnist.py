"""Fashion-MNIST reader: the real Debian files (when installed), IDX parsing, the missing-data message."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

from reparam.data.fashion_mnist import DEFAULT_ROOT, INSTALL_COMMAND, load_fashion_mnist, read_idx

installed = pytest.mark.skipif(
    not (DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not installed ({INSTALL_COMMAND})",
)


@installed
def test_real_files_parse_with_the_published_shapes_and_balanced_labels() -> None:
    x, y = load_fashion_mnist("train")
    tx, ty = load_fashion_mnist("test")
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert tx.shape == (10000, 28, 28) and ty.shape == (10000,)
    assert y.dtype == torch.int64 and int(y.min()) == 0 and int(y.max()) == 9
    assert torch.bincount(y).tolist() == [6000] * 10  # the data set is balanced by construction
    assert torch.bincount(ty).tolist() == [1000] * 10
    assert 0 < x.float().mean().item() < 255 and int(x.max()) == 255


def _write_idx(path, tensor: torch.Tensor, magic: bytes = b"\x00\x00\x08") -> None:
    header = magic + bytes([tensor.ndim]) + struct.pack(f">{tensor.ndim}I", *tensor.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + tensor.numpy().tobytes())


def test_read_idx_round_trips_and_rejects_bad_headers(tmp_path) -> None:
    t = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "ok.gz", t)
    assert torch.equal(read_idx(tmp_path / "ok.gz"), t)
    _write_idx(tmp_path / "float.gz", t, magic=b"\x00\x00\x0d")
    with pytest.raises(ValueError, match="type code 0x0d"):
        read_idx(tmp_path / "float.gz")
    _write_idx(tmp_path / "magic.gz", t, magic=b"\x01\x00\x08")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "magic.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + bytes(9))
    with pytest.raises(ValueError, match="10 bytes"):
        read_idx(tmp_path / "short.gz")


def test_missing_files_name_the_apt_get_command(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        load_fashion_mnist("test", root=tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in str(e.value)
    with pytest.raises(ValueError, match="split must be one of"):
        load_fashion_mnist("val", root=tmp_path)


def test_labels_outside_the_ten_classes_are_refused(tmp_path) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", torch.zeros(3, 28, 28, dtype=torch.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", torch.tensor([0, 3, 12], dtype=torch.uint8))
    with pytest.raises(ValueError, match="label 12 is outside 0..9"):
        load_fashion_mnist("test", root=tmp_path)
