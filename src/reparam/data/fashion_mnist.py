"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``: its gzipped IDX files, read directly.

60,000 training and 10,000 test images of 28x28 grey-scale clothing photos in 10 classes (Zalando
Research, MIT licence). Install with ``apt-get install dataset-fashion-mnist``; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["CLASSES", "DEFAULT_ROOT", "INSTALL_COMMAND", "load_fashion_mnist", "read_idx"]

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_COMMAND = "apt-get install dataset-fashion-mnist"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one Fashion-MNIST uses


def read_idx(path: str | Path) -> Tensor:
    """An IDX file of unsigned bytes (gzipped when the name ends in .gz) as a uint8 tensor of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (its first two bytes must be zero)")
    if data[2] != _UBYTE:
        raise ValueError(f"{path}: IDX type code {data[2]:#04x} is not supported (only unsigned bytes, 0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise ValueError(f"{path}: IDX header for {ndim} dimensions is truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    size = 1
    for n in shape:
        size *= n
    if len(data) - header != size:
        raise ValueError(
            f"{path}: header says shape {shape} ({size} bytes) but the file holds {len(data) - header}"
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of ``split`` ("train" or "test").

    ``root`` defaults to where the Debian package puts the files; missing files raise FileNotFoundError
    naming the install command.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    root = DEFAULT_ROOT if root is None else Path(root)
    paths = [root / name for name in _FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files not found in {root} (missing: {', '.join(missing)}); "
            f"install them with: {INSTALL_COMMAND}"
        )
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {split} in {root}: images {tuple(images.shape)} and labels "
            f"{tuple(labels.shape)} do not pair up as (N, H, W) and (N,)"
        )
    if int(labels.max()) >= len(CLASSES):
        raise ValueError(f"Fashion-MNIST {split} in {root}: label {int(labels.max())} is outside 0..9")
    return images, labels.long()
