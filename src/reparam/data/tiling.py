"""Cut large labelled photos into fixed-size tiles with YOLO labels.

Rules (exact, unit-tested): tiles are ``tile`` x ``tile`` pixels (the whole side when the photo is
smaller), evenly spaced so that neighbours overlap by at least ``overlap`` pixels and the last tile ends
on the photo's edge. A box belongs to a tile when at least ``min_visibility`` of its area lies inside
the tile; it is then clipped to the tile. Boxes below that share are dropped from that tile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = [
    "Box",
    "Tile",
    "boxes_in_tile",
    "plan_tiles",
    "tile_origins",
    "write_tiles",
    "yolo_label_lines",
]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels, corners (x1, y1) and (x2, y2), with a class id."""

    x1: float
    y1: float
    x2: float
    y2: float
    cls: int

    @property
    def area(self) -> float:
        """Area in square pixels (0 for degenerate boxes)."""
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)


@dataclass(frozen=True)
class Tile:
    """A window of a photo: top-left corner and size in pixels."""

    x0: int
    y0: int
    w: int
    h: int


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles along one side: evenly spread, first at 0, last ending at ``length``."""
    if length < 1 or tile < 1:
        raise ValueError(f"length and tile must be >= 1, got length={length}, tile={tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def plan_tiles(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """All tiles of a ``width`` x ``height`` photo, row by row."""
    tw, th = min(tile, width), min(tile, height)
    return [
        Tile(x0, y0, tw, th)
        for y0 in tile_origins(height, tile, overlap)
        for x0 in tile_origins(width, tile, overlap)
    ]


def boxes_in_tile(boxes: Sequence[Box], tile: Tile, min_visibility: float) -> list[Box]:
    """Boxes that are at least ``min_visibility`` inside ``tile``, clipped and in tile coordinates."""
    if not 0.0 < min_visibility <= 1.0:
        raise ValueError(f"min_visibility must be in (0, 1], got {min_visibility}")
    out = []
    for b in boxes:
        if b.area <= 0.0:
            continue
        clipped = Box(
            min(max(b.x1 - tile.x0, 0.0), tile.w),
            min(max(b.y1 - tile.y0, 0.0), tile.h),
            min(max(b.x2 - tile.x0, 0.0), tile.w),
            min(max(b.y2 - tile.y0, 0.0), tile.h),
            b.cls,
        )
        if clipped.area >= min_visibility * b.area:
            out.append(clipped)
    return out


def yolo_label_lines(boxes: Sequence[Box], width: int, height: int) -> list[str]:
    """YOLO label rows ``cls cx cy w h`` normalised by the image size, six decimals."""
    return [
        f"{b.cls} {(b.x1 + b.x2) / 2 / width:.6f} {(b.y1 + b.y2) / 2 / height:.6f} "
        f"{(b.x2 - b.x1) / width:.6f} {(b.y2 - b.y1) / height:.6f}"
        for b in boxes
    ]


def write_tiles(
    image: Image.Image,
    boxes: Sequence[Box],
    stem: str,
    images_dir: Path,
    labels_dir: Path,
    tile: int,
    overlap: int,
    min_visibility: float,
) -> tuple[int, list[int]]:
    """Write every tile of ``image`` as PNG plus its label file; returns (tiles, class id of every box)."""
    image = image.convert("RGB")
    classes: list[int] = []
    tiles = plan_tiles(image.width, image.height, tile, overlap)
    for t in tiles:
        name = f"{stem}_x{t.x0}_y{t.y0}"
        kept = boxes_in_tile(boxes, t, min_visibility)
        image.crop((t.x0, t.y0, t.x0 + t.w, t.y0 + t.h)).save(images_dir / f"{name}.png")
        lines = yolo_label_lines(kept, t.w, t.h)
        (labels_dir / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
        classes += [b.cls for b in kept]
    return len(tiles), classes
