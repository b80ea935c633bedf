"""The default real dataset: DeepForest's labelled aerial tree-crown photos, tiled for YOLO.

The PyPI wheel ``deepforest==2.1.0`` ships four photos with Pascal-VOC box files in ``deepforest/data/``
(951 hand-drawn boxes; classes Tree, Alive, Dead). We fetch only that wheel with ``pip download
--no-deps`` (deepforest itself is never installed or imported), check its SHA-256, extract the labelled
photos, and tile them into a YOLO dataset: training and validation tiles come from different photos.
Everything is cached (``$REPARAM_CACHE``, else ``$XDG_CACHE_HOME/reparam`` or ``~/.cache/reparam``), so
later runs work offline; placing the wheel in ``<cache>/wheels/`` also works without network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from PIL import Image

from reparam.checks import strict_bools
from reparam.data.tiling import Box, write_tiles
from reparam.text import Progress, say

__all__ = [
    "CLASS_NAMES",
    "DEEPFOREST_VERSION",
    "VAL_PHOTOS",
    "LabelledPhoto",
    "PreparedDataset",
    "SplitStats",
    "build_yolo_dataset",
    "cache_root",
    "extract_photos",
    "fetch_wheel",
    "parse_voc",
    "prepare_deepforest",
]

DEEPFOREST_VERSION = "2.1.0"
WHEEL_FILE = f"deepforest-{DEEPFOREST_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
CLASS_NAMES = ("Tree", "Alive", "Dead")
# Validation photos (never seen in training): the mid-size NEON Yellowstone crop and the OSBS plot.
VAL_PHOTOS = ("2019_YELL_2_541000_4977000_image_crop.png", "OSBS_029.tif")
_DATA_PREFIX = "deepforest/data/"
_MANIFEST = "manifest.json"
# Bumped whenever the tiling rules or the manifest change, so older cached datasets are rebuilt.
_LAYOUT_VERSION = 2


def cache_root() -> Path:
    """The cache folder: ``$REPARAM_CACHE``, else ``$XDG_CACHE_HOME/reparam`` or ``~/.cache/reparam``."""
    if os.environ.get("REPARAM_CACHE"):
        return Path(os.environ["REPARAM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "reparam"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(dest: Path) -> None:
    """Download the pinned wheel (and nothing else) into ``dest`` with the running Python's pip."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        f"deepforest=={DEEPFOREST_VERSION}", "-d", str(dest),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(
            f"pip download of deepforest=={DEEPFOREST_VERSION} failed (exit {run.returncode}):\n"
            f"{run.stderr.strip()[-2000:]}\nTo work offline, copy {WHEEL_FILE} into {dest}"
        )


def fetch_wheel(cache: Path, progress: Progress | None = None) -> Path:
    """The deepforest wheel in ``cache/wheels``, downloaded on first use; its SHA-256 is checked."""
    wheels = cache / "wheels"
    wheel = wheels / WHEEL_FILE
    if not wheel.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        say(progress, f"downloading {WHEEL_FILE} (20 MB, data only; deepforest is not installed) ...")
        _pip_download(wheels)
        if not wheel.is_file():
            raise RuntimeError(f"pip reported success but {wheel} is missing")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheel} has SHA-256 {digest}, expected {WHEEL_SHA256}: delete it and run again")
    return wheel


@dataclass
class LabelledPhoto:
    """One photo on disk and its boxes in pixels."""

    path: Path
    boxes: list[Box]


def parse_voc(xml_text: str, class_names: Sequence[str] = CLASS_NAMES) -> tuple[str, int, int, list[Box]]:
    """Parse a Pascal-VOC annotation: (image filename, width, height, boxes with class ids)."""
    root = ET.fromstring(xml_text)
    filename = root.findtext("filename")
    width, height = root.findtext("size/width"), root.findtext("size/height")
    if not filename or width is None or height is None:
        raise ValueError("annotation lacks <filename> or <size>/<width>/<height>")
    boxes = []
    for obj in root.iter("object"):
        name = obj.findtext("name")
        if name not in class_names:
            raise ValueError(f"annotation of {filename} has class {name!r}, not one of {list(class_names)}")
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"annotation of {filename} has an object without <bndbox>")
        x1, y1, x2, y2 = (float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append(Box(x1, y1, x2, y2, class_names.index(name)))
    return filename, int(width), int(height), boxes


def extract_photos(wheel: Path, dest: Path) -> list[LabelledPhoto]:
    """Extract every VOC-annotated photo of the wheel's data folder into ``dest`` (kept as a cache)."""
    dest.mkdir(parents=True, exist_ok=True)
    photos = []
    with zipfile.ZipFile(wheel) as zf:
        xmls = sorted(n for n in zf.namelist() if n.startswith(_DATA_PREFIX) and n.endswith(".xml"))
        for name in xmls:
            filename, width, height, boxes = parse_voc(zf.read(name).decode())
            target = dest / filename
            if not target.is_file():
                tmp = target.with_name(target.name + ".part")
                tmp.write_bytes(zf.read(_DATA_PREFIX + filename))
                tmp.replace(target)
            with Image.open(target) as im:
                if im.size != (width, height):
                    raise RuntimeError(f"{filename} is {im.size}, its annotation says {(width, height)}")
            photos.append(LabelledPhoto(target, boxes))
    return photos


@dataclass
class SplitStats:
    """What one split of a prepared dataset holds."""

    photos: list[str]
    images: int = 0
    boxes: int = 0
    source_boxes: int = 0
    per_class: dict[str, int] = field(default_factory=dict)


@dataclass
class PreparedDataset:
    """A tiled YOLO dataset: its data YAML, folder, per-split counts, and whether the cache was reused."""

    yaml: Path
    root: Path
    splits: dict[str, SplitStats]
    settings: dict[str, float | int]
    reused: bool = False

    def summary(self) -> str:
        """Human-readable counts per split."""
        lines = [f"dataset {self.root}" + (" (cached)" if self.reused else ""), f"data YAML {self.yaml}"]
        for split, s in self.splits.items():
            classes = ", ".join(f"{k} {v}" for k, v in s.per_class.items() if v)
            lines.append(
                f"  {split:<5} {s.images:>4} tiles {s.boxes:>5} boxes ({classes or 'none'}) cut from "
                f"{len(s.photos)} photos with {s.source_boxes} boxes: {', '.join(s.photos)}"
            )
        return "\n".join(lines)


def _settings(tile: int, overlap: int, min_visibility: float) -> dict[str, float | int]:
    return {"tile": tile, "overlap": overlap, "min_visibility": min_visibility, "layout": _LAYOUT_VERSION}


def build_yolo_dataset(
    photos: Sequence[LabelledPhoto],
    val_photos: Sequence[str],
    root: Path,
    class_names: Sequence[str] = CLASS_NAMES,
    tile: int = 320,
    overlap: int = 64,
    min_visibility: float = 0.5,
) -> PreparedDataset:
    """Tile ``photos`` into ``root`` (images/ and labels/ per split) and write ``root/data.yaml``.

    Photos named in ``val_photos`` go to the val split, all others to train, so no photo feeds both.
    The folder is built beside ``root`` and renamed into place when complete.
    """
    names = {p.path.name for p in photos}
    missing = sorted(set(val_photos) - names)
    if missing:
        raise ValueError(f"val_photos names photos that are not in the set: {missing}")
    if not names - set(val_photos):
        raise ValueError("val_photos takes every photo: the train split would be empty")
    settings = _settings(tile, overlap, min_visibility)
    work = root.with_name(root.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    splits = {"train": SplitStats([]), "val": SplitStats([])}
    for photo in sorted(photos, key=lambda p: p.path.name):
        split = "val" if photo.path.name in val_photos else "train"
        images_dir, labels_dir = work / "images" / split, work / "labels" / split
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        with Image.open(photo.path) as im:
            n, classes = write_tiles(
                im, photo.boxes, photo.path.stem.replace(" ", "_"), images_dir, labels_dir,
                tile, overlap, min_visibility,
            )  # fmt: skip
        stats = splits[split]
        stats.photos.append(photo.path.name)
        stats.images += n
        stats.boxes += len(classes)
        stats.source_boxes += len(photo.boxes)
        counts = Counter(classes)
        stats.per_class = {c: stats.per_class.get(c, 0) + counts[i] for i, c in enumerate(class_names)}
    data = {
        "path": str(root.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(class_names)),
    }
    (work / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    manifest = {"settings": settings, "splits": {k: asdict(v) for k, v in splits.items()}}
    (work / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    work.rename(root)
    return PreparedDataset(root / "data.yaml", root, splits, settings)


def _load_manifest(root: Path, settings: dict) -> PreparedDataset | None:
    path = root / _MANIFEST
    if not (path.is_file() and (root / "data.yaml").is_file()):
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("settings") != settings:
        return None
    splits = {k: SplitStats(**v) for k, v in manifest["splits"].items()}
    return PreparedDataset(root / "data.yaml", root, splits, settings, reused=True)


@strict_bools
def prepare_deepforest(
    cache: Path | str | None = None,
    tile: int = 320,
    overlap: int = 64,
    min_visibility: float = 0.5,
    force: bool = False,
    progress: Progress | None = None,
) -> PreparedDataset:
    """The tiled DeepForest dataset, built on first use and reused from the cache afterwards."""
    if tile < 32:
        raise ValueError(f"tile must be >= 32 pixels, got {tile}")
    cache = Path(cache).expanduser() if cache is not None else cache_root()
    settings = _settings(tile, overlap, min_visibility)
    name = f"deepforest-{DEEPFOREST_VERSION}-tile{tile}-overlap{overlap}-vis{min_visibility:g}"
    root = cache / "datasets" / name
    if not force and (ready := _load_manifest(root, settings)) is not None:
        return ready
    wheel = fetch_wheel(cache, progress)
    photos = extract_photos(wheel, cache / f"deepforest-{DEEPFOREST_VERSION}" / "data")
    say(progress, f"tiling {len(photos)} photos ({sum(len(p.boxes) for p in photos)} boxes) into {root} ...")
    return build_yolo_dataset(photos, VAL_PHOTOS, root, CLASS_NAMES, tile, overlap, min_visibility)
