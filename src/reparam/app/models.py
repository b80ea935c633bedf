"""What every command shares: loading a model argument safely, its forms (training, converted, plain),
the blocks it uses, and the image-size rule.

A model argument is a zoo name (``yolov8n-orepa.yaml``), an Ultralytics YAML or a local ``.pt`` checkpoint.
A checkpoint is read weights-only against the Ultralytics + reparam allow-list before Ultralytics sees it,
and Ultralytics then loads it in its own safe-load mode, so no code from the file runs unless the caller
passes ``trust=True``. Unreadable input (a missing, truncated, corrupted or foreign file, a directory) is a
``ValueError`` or ``FileNotFoundError`` naming the file and the problem, never a traceback from torch.load.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import pickle
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from reparam.blocks.registry import registered_blocks
from reparam.checks import strict_bools
from reparam.io import check_path
from reparam.text import first_line
from reparam.yolo import convert_model, plain_counterpart
from reparam.yolo.safety import (
    check_model_yaml,
    check_ultralytics_checkpoint,
    load_ultralytics_checkpoint,
    preloaded_checkpoint,
    ultralytics_safe_load,
)

__all__ = [
    "STRIDE",
    "blocks_used",
    "check_checkpoint",
    "checked_preload",
    "first_tensor",
    "load",
    "model_forms",
    "plain_model",
    "stride_imgsz",
    "yaml_name",
]


STRIDE = 32
"""The largest stride of the detection models: image sizes are rounded up to a multiple of it."""

log = logging.getLogger("reparam")

_MODEL_SUFFIXES = (".pt", ".yaml", ".yml")
# What torch.load / Ultralytics raise for a file that is not a readable Ultralytics checkpoint.
_UNREADABLE = (
    RuntimeError, TypeError, AttributeError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
)  # fmt: skip


@strict_bools
def check_checkpoint(path: str | Path, *, trust: bool = False) -> Any:
    """Refuse a checkpoint before Ultralytics reads it: missing, a directory, unreadable, (unless ``trust``)
    asking for a global off the allow-list (``UnsafeCheckpointError`` naming it), holding no Ultralytics
    model, or whose model YAML fails :func:`reparam.yolo.safety.check_model_cfg` (sizes bounded, no code).
    Returns the checkpoint read (None with ``trust``: the file is left to Ultralytics)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"model checkpoint {path} does not exist (reparam never downloads weights)")
    if path.is_dir():
        raise ValueError(f"model checkpoint {path} is a directory, expected a .pt file")
    if trust:  # a trusted file is unpickled once, by Ultralytics, not twice
        return None
    ckpt = load_ultralytics_checkpoint(path)
    check_ultralytics_checkpoint(ckpt, str(path))
    return ckpt


@strict_bools
def checked_preload(path: Path, *, trust: bool = False) -> contextlib.AbstractContextManager[None]:
    """:func:`check_checkpoint` ``path``, then the block in which Ultralytics reads it: for a legacy
    (non-zip) file, which its safe mode cannot read, it gets what was read here; else it reads the file."""
    ckpt = check_checkpoint(path, trust=trust)
    return preloaded_checkpoint(ckpt if ckpt is not None and not zipfile.is_zipfile(path) else None, path)


@strict_bools
def load(model: str | Path, *, trust: bool = False) -> YOLO:
    """A YOLO object for a zoo name (``yolov8n-orepa.yaml``), an Ultralytics YAML or a local checkpoint.

    A checkpoint is checked with :func:`check_checkpoint` and then loaded by Ultralytics in its safe-load
    mode; ``trust=True`` unpickles it fully (runs code from the file: only for files you trust).
    Raises ValueError naming the file for a directory, an unsupported file type, an unreadable or unsafe
    checkpoint, FileNotFoundError for a YAML that is neither a file nor a known model.
    """
    name = str(model)
    path = check_path("model", name)
    if path.is_dir():
        raise ValueError(
            f"model={name} is a directory, expected a zoo name, a model YAML or a .pt checkpoint"
        )
    if path.suffix.lower() not in _MODEL_SUFFIXES:
        raise ValueError(f"model={name}: unsupported file type, expected a zoo name, a .yaml or a .pt file")
    is_checkpoint = path.suffix.lower() == ".pt"
    preload: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if is_checkpoint:
        preload = checked_preload(path, trust=trust)
    elif path.is_file():
        check_model_yaml(path)
    try:
        with ultralytics_safe_load(trust), preload:
            return YOLO(name, verbose=False)
    except FileNotFoundError as e:
        if is_checkpoint:
            raise
        raise FileNotFoundError(
            f"model {name} does not exist: not a file, a reparam zoo name or an Ultralytics model YAML"
        ) from e
    except _UNREADABLE as e:
        if not is_checkpoint:
            raise
        raise ValueError(
            f"model checkpoint {name} is not a readable Ultralytics checkpoint: {first_line(e)}"
        ) from e


def stride_imgsz(imgsz: int) -> int:
    """``imgsz`` rounded up to a multiple of :data:`STRIDE`, with a one-line warning when it changes."""
    if imgsz < 1:
        raise ValueError(f"imgsz must be a positive number of pixels, got {imgsz}")
    rounded = -(-imgsz // STRIDE) * STRIDE
    if rounded != imgsz:
        log.warning("imgsz=%d is not a multiple of the stride %d; using imgsz=%d", imgsz, STRIDE, rounded)
    return rounded


def yaml_name(model: nn.Module) -> str:
    """File name of the YAML an Ultralytics model was built from ('' when unknown)."""
    cfg = getattr(model, "yaml", None) or {}
    return Path(str(cfg.get("yaml_file", ""))).name


def plain_model(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The stock Ultralytics model a zoo model derives from (same classes), fused; None if not a zoo model."""
    try:
        plain = plain_counterpart(yaml_name(model))
    except ValueError:
        return None
    built = DetectionModel(plain, nc=int(model.yaml.get("nc", getattr(model, "nc", 80))), verbose=False)
    return plain, built.float().eval().fuse(verbose=False)


@strict_bools
def model_forms(model: str | Path | nn.Module, *, trust: bool = False) -> dict[str, nn.Module]:
    """Training form (eval), converted form, and the plain model when ``model`` is a zoo model (a file is
    read as :func:`load` reads it)."""
    train_form = (model if isinstance(model, nn.Module) else load(model, trust=trust).model).float().eval()
    forms = {"training form": train_form, "converted": convert_model(copy.deepcopy(train_form))}
    plain = plain_model(train_form)
    if plain is not None:
        forms[f"plain {plain[0]}"] = plain[1]
    return forms


def blocks_used(model: nn.Module) -> Counter[str]:
    """Registered reparam block classes inside ``model`` and how many of each."""
    classes = {spec.cls for spec in registered_blocks().values()}
    return Counter(type(m).__name__ for m in model.modules() if type(m) in classes)


def first_tensor(out: Any) -> Tensor:
    """The first tensor of a model output (Ultralytics' eval forward returns (predictions, extras))."""
    return out if isinstance(out, Tensor) else first_tensor(out[0])
