"""A tiny generated YOLO detection dataset: filled rectangles on noise, labels exact by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_synthetic_dataset"]


def _check(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _write_split(root: Path, split: str, count: int, imgsz: int, nc: int, rng: np.random.Generator) -> None:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    palette = rng.integers(40, 256, size=(nc, 3))
    for i in range(count):
        img = rng.integers(0, 40, size=(imgsz, imgsz, 3), dtype=np.uint8)
        rows = []
        for _ in range(int(rng.integers(1, 4))):
            cls = int(rng.integers(0, nc))
            w, h = (int(v) for v in rng.integers(max(4, imgsz // 8), max(5, imgsz // 2), size=2))
            x0, y0 = int(rng.integers(0, imgsz - w + 1)), int(rng.integers(0, imgsz - h + 1))
            img[y0 : y0 + h, x0 : x0 + w] = palette[cls]
            rows.append(
                f"{cls} {(x0 + w / 2) / imgsz:.6f} {(y0 + h / 2) / imgsz:.6f} {w / imgsz:.6f} {h / imgsz:.6f}"
            )
        Image.fromarray(img).save(images / f"{split}_{i:04d}.png")
        (labels / f"{split}_{i:04d}.txt").write_text("\n".join(rows) + "\n")


def make_synthetic_dataset(
    root: str | Path, n_train: int = 8, n_val: int = 4, imgsz: int = 64, nc: int = 3, seed: int = 0
) -> Path:
    """Write a YOLO dataset of ``n_train``/``n_val`` images under ``root``; returns its data YAML path.

    Each image holds 1-3 axis-aligned rectangles whose colour encodes the class, so labels are exact.
    Later rectangles may overlap earlier ones; the labels still describe where each was drawn.
    """
    _check(n_train=n_train, n_val=n_val, imgsz=imgsz, nc=nc)
    if imgsz < 16:
        raise ValueError(f"imgsz must be >= 16 so rectangles fit, got {imgsz}")
    root = Path(root).resolve()
    rng = np.random.default_rng(seed)
    _write_split(root, "train", n_train, imgsz, nc, rng)
    _write_split(root, "val", n_val, imgsz, nc, rng)
    names = "\n".join(f"  {i}: class{i}" for i in range(nc))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data
