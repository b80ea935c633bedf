"""Hooks into Ultralytics: conversion inside ``fuse()``, a truthful ``is_fused()``, zoo YAML lookup.

Ultralytics calls ``BaseModel.fuse()`` on the model it is about to run for inference (predict, standalone
val, the final val after training, export, benchmark): on a loaded checkpoint or on the exporter's deep
copy, never on the live training or EMA model. Patching ``fuse`` therefore converts reparam blocks exactly
where Ultralytics folds its own BNs, and in the right order: our blocks first, then every Conv -> BN.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from reparam.convert import reparameterize

__all__ = ["convert_model", "patch_fuse", "patch_yaml_lookup", "pending_blocks"]

# Ultralytics' own scale stripping (yaml_model_load): yolov8n-orepa.yaml -> yolov8-orepa.yaml
_SCALE = re.compile(r"(\d+)([nslmx])(.+)?$")


def _pending(module: nn.Module) -> bool:
    """True for a module that conversion would still change: an unconverted block or an unfolded Conv-BN."""
    if callable(getattr(module, "reparameterize", None)) and getattr(module, "deployed", None) is False:
        return True
    return (
        type(module).__module__.startswith("reparam.")
        and callable(getattr(module, "forward_fuse", None))
        and isinstance(getattr(module, "bn", None), nn.BatchNorm2d)
    )


def pending_blocks(model: nn.Module) -> list[str]:
    """Names of the reparam modules in ``model`` that are not converted yet."""
    return [name for name, m in model.named_modules() if _pending(m)]


def convert_model(model: nn.Module) -> nn.Module:
    """Convert ``model`` in place like the patched ``fuse()``: reparam blocks, then every Conv -> BN fold.

    An Ultralytics model is fused through its own (patched) ``fuse()`` so its heads are handled too.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    from ultralytics.nn.tasks import BaseModel

    if isinstance(model, BaseModel):
        return model.fuse(verbose=False)
    return reparameterize(model, inplace=True, allow_train=True)


def patch_fuse() -> None:
    """Wrap ``BaseModel.fuse``/``is_fused`` so reparam blocks convert first and are counted (idempotent)."""
    from ultralytics.nn.tasks import BaseModel

    if getattr(BaseModel.fuse, "_reparam_patched", False):
        return
    original_fuse = BaseModel.fuse
    original_is_fused = BaseModel.is_fused

    def fuse(self: BaseModel, *args: Any, **kwargs: Any) -> Any:
        """Convert reparam blocks and fold their BNs, then run Ultralytics' own fuse."""
        if pending_blocks(self):
            reparameterize(self, inplace=True, allow_train=True)
        return original_fuse(self, *args, **kwargs)

    def is_fused(self: BaseModel, *args: Any, **kwargs: Any) -> bool:
        """Ultralytics' check, and no reparam block left unconverted."""
        return original_is_fused(self, *args, **kwargs) and not pending_blocks(self)

    fuse._reparam_patched = True  # type: ignore[attr-defined]
    BaseModel.fuse = fuse
    BaseModel.is_fused = is_fused


def patch_yaml_lookup(cfg_dir: Path) -> None:
    """Let Ultralytics' model-YAML lookup find the zoo files shipped in ``cfg_dir`` by name (idempotent).

    ``yaml_model_load`` asks for the scaled name first (``yolov8n-orepa.yaml``) and then the family name
    (``yolov8-orepa.yaml``); both bare names answer with the shipped family file, and the scale is still
    guessed from the name the user gave. Paths and other names go to Ultralytics' own lookup.
    """
    import ultralytics.nn.tasks as tasks

    if getattr(tasks.check_yaml, "_reparam_patched", False):
        return
    original = tasks.check_yaml

    def check_yaml(file: str | Path, suffix: tuple[str, ...] = (".yaml", ".yml"), hard: bool = True) -> Any:
        """Ultralytics' check_yaml, answering bare names of reparam zoo YAMLs with the shipped file."""
        name = str(file)
        if Path(name).name == name and not Path(name).exists():
            family = cfg_dir / _SCALE.sub(r"\1\3", name)
            if family.is_file():
                return str(family)
        return original(file, suffix=suffix, hard=hard)

    check_yaml._reparam_patched = True  # type: ignore[attr-defined]
    tasks.check_yaml = check_yaml
