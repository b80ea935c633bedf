"""The shipped model-zoo YAMLs and the stock Ultralytics model each one derives from."""

from __future__ import annotations

import re
from pathlib import Path

from reparam.yolo.integration import cfg_dir

__all__ = ["PLAIN_FAMILY", "plain_counterpart", "zoo_names", "zoo_path"]

# zoo family -> the Ultralytics family YAML it is derived from (same widths, same layer count)
PLAIN_FAMILY = {
    "yolov8-orepa.yaml": "yolov8.yaml",
    "yolov8-repvgg.yaml": "yolov8.yaml",
    "yolov8-qarepvgg.yaml": "yolov8.yaml",
    "yolov8-dbb.yaml": "yolov8.yaml",
    "yolov8-efficientrep.yaml": "yolov8.yaml",
    "yolov8-c2f-dynamicconv.yaml": "yolov8.yaml",
    "yolov5-orepa.yaml": "yolov5.yaml",
    "yolo11-orepa.yaml": "yolo11.yaml",
    "yolov10-dynamicconv.yaml": "yolov10n.yaml",
    "yolov10-dynamicconv2.yaml": "yolov10n.yaml",
    "yolov6-efficientrep.yaml": "yolov6.yaml",
}

_SCALED = re.compile(r"^(yolo(?:v)?\d+)([nslmx])(-.+)?\.ya?ml$")


def zoo_names() -> list[str]:
    """The family YAML names shipped with reparam (e.g. ``yolov8-orepa.yaml``), sorted."""
    return sorted(p.name for p in cfg_dir().glob("*.yaml"))


def _family(name: str) -> tuple[str, str]:
    """``yolov8n-orepa.yaml`` -> (``yolov8-orepa.yaml``, ``n``); a family name gives an empty scale."""
    base = Path(name).name
    if base in PLAIN_FAMILY:
        return base, ""
    m = _SCALED.match(base)
    if m is None or f"{m.group(1)}{m.group(3) or ''}.yaml" not in PLAIN_FAMILY:
        raise ValueError(f"{name!r} is not a reparam zoo model; zoo families: {', '.join(zoo_names())}")
    return f"{m.group(1)}{m.group(3) or ''}.yaml", m.group(2)


def zoo_path(name: str) -> Path:
    """The shipped YAML file of zoo model ``name`` (family or scaled name)."""
    family, _ = _family(name)
    path = cfg_dir() / family
    if not path.is_file():
        raise ValueError(f"zoo model {name!r} is not shipped in this install ({path} is missing)")
    return path


def plain_counterpart(name: str) -> str:
    """The stock Ultralytics YAML a zoo model derives from: ``yolov8n-orepa.yaml`` -> ``yolov8n.yaml``."""
    family, scale = _family(name)
    plain = PLAIN_FAMILY[family]
    if plain == "yolov10n.yaml" or not scale:
        return plain
    stem = plain.removesuffix(".yaml")
    return f"{stem}{scale}.yaml"
