"""Hooks into Ultralytics: conversion inside ``fuse()``, a truthful ``is_fused()``, zoo YAML lookup and a
loud ``load()`` when pretrained weights leave reparam tensors untouched.

Ultralytics calls ``BaseModel.fuse()`` on the model it is about to run for inference (predict, standalone
val, the final val after training, export, benchmark): on a loaded checkpoint or on the exporter's deep
copy, never on the live training or EMA model. Patching ``fuse`` therefore converts reparam blocks exactly
where Ultralytics folds its own BNs, and in the right order: our blocks first, then every Conv -> BN.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reparam.blocks.base import is_pending, outermost_modules
from reparam.convert import reparameterize

__all__ = [
    "convert_model",
    "patch_fuse",
    "patch_load",
    "patch_yaml_lookup",
    "pending_blocks",
    "untransferred_tensors",
]

# Ultralytics' own scale stripping (yaml_model_load): yolov8n-orepa.yaml -> yolov8-orepa.yaml
_SCALE = re.compile(r"(\d+)([nslmx])(.+)?$")


def pending_blocks(model: nn.Module) -> list[str]:
    """Names of the outermost modules in ``model`` that are not converted yet (a container, not its parts)."""
    return [name for name, _ in outermost_modules(model, is_pending)]


def convert_model(model: nn.Module) -> nn.Module:
    """Convert ``model`` in place like the patched ``fuse()``: reparam blocks, then every exact BN fold.

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
        """Convert each reparam block (and fold the BNs inside it), then run Ultralytics' own fuse, which
        alone handles Ultralytics' modules (Conv2's cv2, RepConv, QAT models) by its own rules."""
        for _, block in list(outermost_modules(self, is_pending)):
            reparameterize(block, inplace=True, allow_train=True)
        return original_fuse(self, *args, **kwargs)

    def is_fused(self: BaseModel, *args: Any, **kwargs: Any) -> bool:
        """Ultralytics' check, and no reparam block left unconverted."""
        return original_is_fused(self, *args, **kwargs) and not pending_blocks(self)

    fuse._reparam_patched = True  # type: ignore[attr-defined]
    BaseModel.fuse = fuse
    BaseModel.is_fused = is_fused


def _is_reparam(module: nn.Module) -> bool:
    return type(module).__module__.startswith("reparam.")


def untransferred_tensors(model: nn.Module, source: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """For each outermost reparam module of ``model``, its tensors that Ultralytics' transfer skips.

    Ultralytics copies a tensor when ``source`` has the same key with the same shape (``intersect_dicts``);
    returns ``{"<name> (layer <i> <Class>)": ["<key>: missing" | "<key>: shape (..) vs (..)", ...]}``
    for the modules with at least one skipped tensor.
    """
    own = model.state_dict()
    skipped: dict[str, list[str]] = {}
    for name, block in outermost_modules(model, _is_reparam):
        reasons = []
        for key in (f"{name}.{k}" for k in block.state_dict()):
            if key not in source:
                reasons.append(f"{key}: missing")
            elif source[key].shape != own[key].shape:
                reasons.append(f"{key}: shape {tuple(source[key].shape)} vs {tuple(own[key].shape)}")
        if reasons:
            parts = name.split(".")
            layer = f"layer {parts[1]} " if len(parts) > 1 and parts[1].isdigit() else ""
            skipped[f"{name} ({layer}{type(block).__name__})"] = reasons
    return skipped


def patch_load() -> None:
    """Wrap ``BaseModel.load`` to warn, naming the blocks, when reparam tensors are not transferred.

    Ultralytics only prints "Transferred a/b items"; tensors it skips keep their initial values. Idempotent.
    """
    from ultralytics.nn.tasks import BaseModel

    if getattr(BaseModel.load, "_reparam_patched", False):
        return
    original_load = BaseModel.load

    def load(self: BaseModel, weights: Any, verbose: bool = True) -> Any:
        """Ultralytics' load, then a warning listing the reparam tensors it skipped (even if not verbose)."""
        from ultralytics.utils import LOGGER

        out = original_load(self, weights, verbose=verbose)
        source = (weights.get("ema") or weights["model"]) if isinstance(weights, dict) else weights
        skipped = untransferred_tensors(self, source.state_dict())
        if skipped:
            count = sum(len(v) for v in skipped.values())
            details = "; ".join(
                f"{block}: {len(v)} tensors ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                for block, v in skipped.items()
            )
            LOGGER.warning(
                f"reparam: the pretrained weights skip {count} tensors of {len(skipped)} reparam blocks, "
                f"which keep their initial values: {details}"
            )
        return out

    load._reparam_patched = True  # type: ignore[attr-defined]
    BaseModel.load = load


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
