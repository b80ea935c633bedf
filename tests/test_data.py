"""Data preparation: tiling and clipping rules, VOC parsing, the cached DeepForest pipeline (no download)."""

from __future__ import annotations

import hashlib
import itertools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from reparam.data import deepforest
from reparam.data.deepforest import LabelledPhoto, build_yolo_dataset, parse_voc, prepare_deepforest
from reparam.data.tiling import Box, Tile, boxes_in_tile, plan_tiles, tile_origins, yolo_label_lines


def test_tile_origins_spread_evenly_and_end_on_the_edge() -> None:
    assert tile_origins(1000, 320, 64) == [0, 227, 453, 680]
    assert tile_origins(320, 320, 0) == [0]
    assert tile_origins(100, 320, 64) == [0]
    assert tile_origins(640, 320, 0) == [0, 320]
    starts = tile_origins(2299, 320, 64)
    assert starts[-1] == 2299 - 320
    assert all(0 < b - a <= 320 - 64 for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 320, 0), "length and tile must be >= 1"),
        ((100, 32, 32), "overlap must be in"),
        ((100, 32, -1), "overlap"),
    ],
)
def test_tile_origins_rejects_bad_arguments(args: tuple[int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tile_origins(*args)


def test_plan_tiles_shrinks_tiles_on_small_photos() -> None:
    assert plan_tiles(200, 50, 64, 0) == [
        Tile(0, 0, 64, 50),
        Tile(45, 0, 64, 50),
        Tile(91, 0, 64, 50),
        Tile(136, 0, 64, 50),
    ]


def test_boxes_in_tile_clips_and_applies_the_visibility_rule() -> None:
    tile = Tile(100, 50, 64, 64)
    boxes = [
        Box(110, 60, 130, 80, 0),  # fully inside: shifted only
        Box(90, 60, 110, 70, 1),  # exactly half inside (x 100..110 of 90..110): kept, clipped
        Box(150, 100, 170, 120, 2),  # 14 x 14 of 20 x 20 = 49 % inside: dropped
        Box(160, 100, 170, 110, 0),  # 4 x 10 of 10 x 10 = 40 % inside: dropped at 0.5, kept at 0.4
        Box(120, 60, 120, 70, 0),  # zero width: always dropped
        Box(0, 0, 10, 10, 0),  # outside
    ]
    assert boxes_in_tile(boxes, tile, 0.5) == [Box(10, 10, 30, 30, 0), Box(0, 10, 10, 20, 1)]
    assert boxes_in_tile(boxes, tile, 0.4) == [
        Box(10, 10, 30, 30, 0),
        Box(0, 10, 10, 20, 1),
        Box(50, 50, 64, 64, 2),
        Box(60, 50, 64, 60, 0),
    ]
    with pytest.raises(ValueError, match=r"min_visibility must be in \(0, 1\]"):
        boxes_in_tile(boxes, tile, 0.0)


def test_yolo_label_lines_are_normalised_centre_size() -> None:
    assert yolo_label_lines([Box(0, 10, 10, 20, 1), Box(16, 0, 64, 32, 2)], 64, 32) == [
        "1 0.078125 0.468750 0.156250 0.312500",
        "2 0.625000 0.500000 0.750000 1.000000",
    ]


def _voc(filename: str, size: tuple[int, int], objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>"
        for n, (a, b, c, d) in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{objs}</annotation>"
    )


def test_parse_voc_maps_class_names_to_ids() -> None:
    xml = _voc("a.png", (40, 30), [("Dead", (1, 2, 3, 4)), ("Tree", (5, 6, 7, 8))])
    assert parse_voc(xml) == ("a.png", 40, 30, [Box(1, 2, 3, 4, 2), Box(5, 6, 7, 8, 0)])
    with pytest.raises(ValueError, match="class 'Shrub', not one of"):
        parse_voc(_voc("a.png", (4, 3), [("Shrub", (1, 2, 3, 4))]))
    with pytest.raises(ValueError, match="lacks <filename>"):
        parse_voc("<annotation/>")


def _photo(path: Path, size: tuple[int, int], seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_build_yolo_dataset_tiles_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    train_px = _photo(src / "train photo.png", (100, 64), 0)
    _photo(src / "val.png", (64, 40), 1)
    photos = [
        LabelledPhoto(src / "train photo.png", [Box(10, 8, 30, 24, 0), Box(40, 30, 60, 50, 1)]),
        LabelledPhoto(src / "val.png", [Box(0, 0, 8, 8, 2)]),
    ]
    ds = build_yolo_dataset(
        photos, ["val.png"], tmp_path / "ds", ("Tree", "Alive", "Dead"), tile=64, overlap=8
    )
    # train photo 100 x 64 -> tiles at x 0 and 36; box 1 (x 40..60) lies in both, box 0 (x 10..30) only in x0.
    assert sorted(p.name for p in (ds.root / "images" / "train").iterdir()) == [
        "train_photo_x0_y0.png",
        "train_photo_x36_y0.png",
    ]
    assert (ds.root / "labels/train/train_photo_x0_y0.txt").read_text().splitlines() == [
        "0 0.312500 0.250000 0.312500 0.250000",
        "1 0.781250 0.625000 0.312500 0.312500",
    ]
    assert (ds.root / "labels/train/train_photo_x36_y0.txt").read_text().splitlines() == [
        "1 0.218750 0.625000 0.312500 0.312500",
    ]
    tile = np.asarray(Image.open(ds.root / "images/train/train_photo_x36_y0.png"))
    np.testing.assert_array_equal(tile, train_px[0:64, 36:100])
    assert (ds.root / "labels/val/val_x0_y0.txt").read_text() == "2 0.062500 0.100000 0.125000 0.200000\n"
    assert ds.splits["train"].photos == ["train photo.png"]
    assert ds.splits["val"].photos == ["val.png"]
    assert (ds.splits["train"].images, ds.splits["train"].boxes, ds.splits["train"].source_boxes) == (2, 3, 2)
    assert ds.splits["train"].per_class == {"Tree": 1, "Alive": 2, "Dead": 0}
    data = yaml.safe_load(ds.yaml.read_text())
    assert data == {
        "path": str(ds.root.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "Tree", 1: "Alive", 2: "Dead"},
    }
    assert not (tmp_path / "ds.building").exists()


def test_build_yolo_dataset_rejects_bad_splits(tmp_path: Path) -> None:
    photos = [LabelledPhoto(tmp_path / "a.png", [])]
    with pytest.raises(ValueError, match=r"val_photos names photos that are not in the set: \['b.png'\]"):
        build_yolo_dataset(photos, ["b.png"], tmp_path / "ds")
    with pytest.raises(ValueError, match="train split would be empty"):
        build_yolo_dataset(photos, ["a.png"], tmp_path / "ds")


def _fake_wheel(path: Path, tmp: Path) -> str:
    """A wheel-shaped zip with two labelled photos in deepforest/data/, plus an unrelated file."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, size, seed in (("one.png", (80, 48), 2), ("two.tif", (48, 48), 3)):
            _photo(tmp / name, size, seed)
            zf.write(tmp / name, f"deepforest/data/{name}")
            xml = _voc(name, size, [("Tree", (4, 4, 20, 20)), ("Alive", (30, 10, 44, 30))])
            zf.writestr(f"deepforest/data/{Path(name).stem}.xml", xml)
        zf.writestr("deepforest/main.py", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_deepforest_downloads_once_then_reuses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_pip(dest: Path) -> None:
        calls.append(dest)
        digest = _fake_wheel(dest / deepforest.WHEEL_FILE, tmp_path)
        monkeypatch.setattr(deepforest, "WHEEL_SHA256", digest)

    monkeypatch.setattr(deepforest, "_pip_download", fake_pip)
    monkeypatch.setattr(deepforest, "VAL_PHOTOS", ("two.tif",))
    monkeypatch.setenv("REPARAM_CACHE", str(tmp_path / "cache"))
    first = prepare_deepforest(tile=32, overlap=0)
    assert calls == [tmp_path / "cache" / "wheels"]
    assert not first.reused
    assert first.root.parent == tmp_path / "cache" / "datasets"
    assert (first.splits["train"].photos, first.splits["val"].photos) == (["one.png"], ["two.tif"])
    assert (first.splits["train"].images, first.splits["val"].images) == (6, 4)
    assert sorted(p.name for p in (tmp_path / "cache/deepforest-2.1.0/data").iterdir()) == [
        "one.png",
        "two.tif",
    ]
    again = prepare_deepforest(tile=32, overlap=0)
    assert again.reused and calls == [tmp_path / "cache" / "wheels"]
    assert again.splits == first.splits
    rebuilt = prepare_deepforest(tile=32, overlap=0, force=True)
    assert not rebuilt.reused and len(calls) == 1  # the wheel stays cached
    monkeypatch.setattr(deepforest, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="expected 0000"):
        prepare_deepforest(tile=48, overlap=0)


def test_pip_failure_says_how_to_work_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Failed:
        returncode = 1
        stderr = "ERROR: No matching distribution found"

    monkeypatch.setattr(deepforest.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(
        RuntimeError, match=r"(?s)No matching distribution.*copy deepforest-2.1.0-py3-none-any.whl"
    ):
        deepforest.fetch_wheel(tmp_path)


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REPARAM_CACHE", str(tmp_path / "x"))
    assert deepforest.cache_root() == tmp_path / "x"
    monkeypatch.delenv("REPARAM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert deepforest.cache_root() == tmp_path / "xdg" / "reparam"


def test_prepare_deepforest_rejects_tiny_tiles() -> None:
    with pytest.raises(ValueError, match="tile must be >= 32"):
        prepare_deepforest(tile=16)
