"""Safe loading of Ultralytics + reparam checkpoints: the allow-list of what such a file may ask for, a
loader that uses it, and a switch putting Ultralytics' own loaders (resume, val, export) in safe-load mode."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from torch import nn

from reparam.checks import strict_bools
from reparam.io import AllowEntry, global_name, load_checkpoint

__all__ = ["checkpoint_allow_list", "load_ultralytics_checkpoint", "ultralytics_safe_load"]

_MODULE_PACKAGES = ("torch.nn.modules", "ultralytics.nn.modules", "reparam.blocks", "reparam.models")
_MODULE_FILES = ("ultralytics.nn.tasks",)  # model classes: DetectionModel, SegmentationModel, ...
_DATA_CLASS_FILES = ("ultralytics.utils.loss", "ultralytics.utils.tal")  # criteria pickled by older releases


def checkpoint_allow_list() -> list[AllowEntry]:
    """Everything an Ultralytics + reparam checkpoint may ask for beyond torch's weights-only defaults.

    Every ``nn.Module`` class of torch.nn, ultralytics.nn.modules, ultralytics.nn.tasks, reparam.blocks and
    reparam.models; the loss/assigner classes of ultralytics.utils.loss/tal; and Ultralytics' own safe-load
    entries for official checkpoints (IterableSimpleNamespace, numpy scalars, pathlib, legacy aliases and a
    ``builtins.getattr`` restricted to module attributes). Sorted by name, built once.
    """
    return list(_allow_table().values())


@strict_bools
def load_ultralytics_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> Any:
    """Load an Ultralytics/reparam checkpoint (training, ``YOLO.save``, deploy or state dict) on the CPU
    without running code from it; see ``reparam.io.load_checkpoint`` for the checks and ``trust``."""
    return load_checkpoint(path, trust=trust, allowed=checkpoint_allow_list())


@strict_bools
@contextlib.contextmanager
def ultralytics_safe_load(trust: bool = False) -> Iterator[None]:
    """Run Ultralytics' own checkpoint loading (``YOLO(path)``, resume, val, export) in its safe-load mode.

    Ultralytics reads ``ULTRALYTICS_SAFE_LOAD`` once at import into ``SAFE_LOAD``; this sets both (the
    variable for worker processes such as DDP) and restores them on exit; ``trust=True`` changes nothing.
    """
    if trust:
        yield
        return
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils as utils

    import reparam.yolo  # noqa: F401  (registers reparam's classes with torch's weights-only loader)

    saved = utils.SAFE_LOAD, tasks.SAFE_LOAD, os.environ.get("ULTRALYTICS_SAFE_LOAD")
    utils.SAFE_LOAD = tasks.SAFE_LOAD = True
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    try:
        yield
    finally:
        utils.SAFE_LOAD, tasks.SAFE_LOAD = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop("ULTRALYTICS_SAFE_LOAD", None)
        else:
            os.environ["ULTRALYTICS_SAFE_LOAD"] = saved[2]


@functools.cache
def _allow_table() -> dict[str, AllowEntry]:
    entries: dict[str, AllowEntry] = {}
    for package in _MODULE_PACKAGES:
        for module in _walk(package):
            entries.update(_defined(module, modules_only=True))
    for name in _MODULE_FILES:
        entries.update(_defined(importlib.import_module(name), modules_only=True))
    for name in _DATA_CLASS_FILES:
        entries.update(_defined(importlib.import_module(name), modules_only=False))
    entries.update(_ultralytics_safe_entries())
    return dict(sorted(entries.items()))


def _walk(package: str) -> Iterator[ModuleType]:
    root = importlib.import_module(package)
    yield root
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        yield importlib.import_module(info.name)


def _defined(module: ModuleType, *, modules_only: bool) -> dict[str, AllowEntry]:
    """Classes defined in ``module`` itself (not imported into it), optionally only ``nn.Module`` ones."""
    return {
        global_name(obj): obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and obj.__module__ == module.__name__
        and (issubclass(obj, nn.Module) or not modules_only)
    }


def _ultralytics_safe_entries() -> dict[str, AllowEntry]:
    """Ultralytics' own allow-list for official checkpoints (8.4+), reused rather than copied."""
    from ultralytics.nn import tasks
    from ultralytics.utils import IterableSimpleNamespace

    safe_load = getattr(tasks, "_SafeLoad", None)
    if safe_load is None:  # a release without Ultralytics' safe-load mode: the data class checkpoints carry
        return {global_name(IterableSimpleNamespace): IterableSimpleNamespace}
    import numpy as np

    entries: dict[str, AllowEntry] = {name: (obj, name) for name, obj in safe_load._build().items()}
    float64 = type(np.dtype(np.float64))  # what numpy.dtype rebuilds to; Ultralytics adds it the same way
    entries[global_name(float64)] = float64
    return entries
