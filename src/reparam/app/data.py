"""``reparam data`` and the data argument of train/demo: the DeepForest default set or a checked data YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reparam.data import deepforest
from reparam.data.deepforest import PreparedDataset
from reparam.text import Progress, say

__all__ = ["check_data_yaml", "prepare_data", "resolve_data"]


def prepare_data(progress: Progress | None = None, **options: Any) -> PreparedDataset:
    """Fetch (once) and tile the DeepForest tree-crown set, then print its per-split summary to ``progress``.

    ``options`` are :func:`reparam.data.deepforest.prepare_deepforest`'s (cache, tile, overlap, ...).
    """
    ds = deepforest.prepare_deepforest(**options, progress=progress)
    say(progress, ds.summary())
    return ds


def check_data_yaml(data: str | Path) -> Path:
    """``data`` as an existing data YAML file (a local path or one Ultralytics ships); URLs are left as they
    are. Raises ValueError for a directory or a non-YAML file, FileNotFoundError naming a missing one."""
    name = str(data)
    if "://" in name:
        return Path(name)
    path = Path(name).expanduser()
    if path.is_dir():
        raise ValueError(f"data={name} is a directory, expected a data YAML file")
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"data={name}: expected a data YAML file (.yaml)")
    if path.is_file():
        return path.resolve()
    from ultralytics.utils.checks import check_yaml

    try:
        return Path(check_yaml(name, hard=True))
    except FileNotFoundError:
        raise FileNotFoundError(f"data YAML {name} does not exist") from None


def resolve_data(
    data: str | Path | None, tile: int = 320, progress: Progress | None = None
) -> tuple[Path, str]:
    """The data YAML to train on and a one-line description: DeepForest tiles of ``tile`` px by default."""
    if data is not None:
        return check_data_yaml(data), str(data)
    prepared = prepare_data(tile=tile, progress=progress)
    splits = prepared.splits
    desc = f"DeepForest tree crowns: train {splits['train'].images} tiles, val {splits['val'].images} tiles"
    return prepared.yaml, desc
