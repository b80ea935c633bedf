"""Safe loading of Ultralytics + reparam checkpoints: the allow-list of what such a file may ask for, a
loader that uses it, and a switch putting Ultralytics' own loaders (resume, val, export) in safe-load mode."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import pkgutil
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from reparam.checks import strict_bools
from reparam.io import AllowEntry, UnsafeCheckpointError, global_name, load_checkpoint
from reparam.text import first_line, shorten

__all__ = [
    "check_model_cfg",
    "check_model_yaml",
    "check_ultralytics_checkpoint",
    "checkpoint_allow_list",
    "expanded_size",
    "load_ultralytics_checkpoint",
    "preloaded_checkpoint",
    "read_model_yaml",
    "ultralytics_safe_load",
]

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


def check_ultralytics_checkpoint(ckpt: Any, source: str) -> nn.Module:
    """The model of a loaded Ultralytics checkpoint (``ema`` or ``model``) with its YAML checked by
    :func:`check_model_cfg`; ValueError saying what the file holds when it holds no model."""
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"checkpoint {source!r} holds {_holds(ckpt)}, not an Ultralytics model checkpoint (a dict with "
            "the model under 'model' or 'ema', as YOLO.save and training write)"
        )
    from ultralytics.nn.tasks import BaseModel

    if not isinstance(model, BaseModel):
        raise ValueError(
            f"checkpoint {source!r} holds a {type(model).__name__} under 'model', not an Ultralytics model "
            "(DetectionModel, SegmentationModel, ... as YOLO.save and training write)"
        )
    cfg = getattr(model, "yaml", None)
    if cfg is not None:
        check_model_cfg(cfg, f"checkpoint {source!r} model.yaml")
    return model


def _holds(obj: Any) -> str:
    """A few words on what a loaded file holds (for errors)."""
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {list(obj.shape)}"
    if isinstance(obj, dict):
        keys = list(obj)
        shown = ", ".join(_short(k) for k in keys[:4]) + (", ..." if len(keys) > 4 else "")
        if keys and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return f"a state dict of {len(keys)} tensor{'s' * (len(keys) != 1)} ({shown})"
        return f"a dict with keys {shown}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


@contextlib.contextmanager
def preloaded_checkpoint(ckpt: Any, path: str | os.PathLike[str]) -> Iterator[None]:
    """Within the block Ultralytics' loader takes ``ckpt``, already read and checked, when it is asked for
    ``path`` instead of reading the file again (any other file it reads as before): for a legacy (non-zip)
    file, which its weights-only mode cannot read (module records). ``ckpt=None`` changes nothing."""
    if ckpt is None:
        yield
        return
    import ultralytics.nn.tasks as tasks

    original, wanted = tasks.torch_safe_load, Path(path).resolve()

    def load(weight: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(str(weight)).resolve() == wanted:
            return ckpt, str(weight)
        return original(weight, *args, **kwargs)

    tasks.torch_safe_load = load
    try:
        yield
    finally:
        tasks.torch_safe_load = original


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
    for name in [n for n, e in entries.items() if isinstance(e, tuple) and n.endswith("multiarray.scalar")]:
        entries[name] = (_numpy_scalar, name)
    entries["numpy.dtype"] = (_numpy_dtype, "numpy.dtype")
    return entries


_NUMERIC = "biufc"  # numpy kinds of the scalars checkpoints hold: bool, int, uint, float, complex


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> Any:
    """``numpy.dtype`` as a checkpoint may call it: numeric types only (a ``V2000000000`` void type makes
    the next scalar allocate gigabytes from a tiny file)."""
    import numpy as np

    dtype = np.dtype(spec) if isinstance(spec, str) and len(spec) <= 4 else None
    if dtype is None or dtype.kind not in _NUMERIC or dtype.itemsize > 16:
        raise UnsafeCheckpointError(
            f"asks numpy for dtype {_short(spec)}; only numeric types (bool, int, float, complex) are "
            "accepted"
        )
    return np.dtype(spec, bool(align), bool(copy))


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's scalar rebuild as a checkpoint may call it: a numeric dtype and exactly its bytes."""
    import numpy as np

    ok = isinstance(dtype, np.dtype) and dtype.kind in _NUMERIC and isinstance(data, bytes)
    if not ok or len(data) != dtype.itemsize:
        size = len(data) if isinstance(data, bytes) else 0
        raise UnsafeCheckpointError(
            f"asks numpy for a scalar of dtype {_short(dtype)} from {size} bytes; only numeric scalars of "
            "their exact size are accepted"
        )
    return np.float64(0).__reduce__()[0](dtype, data)


# ------------------------------------------------------------------------------- model YAMLs read from files
MAX_YAML_NODES = 100_000
"""Most nodes a model YAML may hold once its aliases are expanded (yolov8x.yaml holds about 400)."""
MAX_ROWS = 1_000
MAX_NC = 25_000
"""Most classes (ImageNet-21k's 21,841 fit); 2,000,000 would make the head alone gigabytes."""
MAX_CHANNELS = 8_192
"""Most channels a row may produce after width scaling, and the bound on every int argument of a row."""
MAX_REPEATS = 64
MAX_MULTIPLE = 4.0
MAX_INPUT_CHANNELS = 1_024
MAX_KEYPOINTS = 1_000
MAX_PARAMS = 200_000_000
"""Most parameters a model built from a file may hold (yolov8x-p6: 97M); counted on the meta device."""
_PLAIN_WORD = re.compile(r"[A-Za-z_][\w.\-]*")  # names and modes: nc, nearest, ...


def read_model_yaml(path: str | os.PathLike[str]) -> Any:
    """The data of a model YAML file, refused (ValueError naming the file) when it cannot be read or its
    aliases expand beyond ``MAX_YAML_NODES`` nodes ("billion laughs": a few hundred bytes, gigabytes)."""
    import yaml

    file = Path(path)
    try:
        loader = yaml.SafeLoader(file.read_text())
        try:
            node = loader.get_single_node()
            if node is not None:
                expanded_size(node, lambda n: _yaml_children(n), f"model YAML {file}")
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"model YAML {file} cannot be read: {first_line(e)}") from None


def check_model_yaml(path: str | os.PathLike[str]) -> None:
    """Refuse a model YAML file before Ultralytics reads it: unreadable, aliases expanding beyond a small
    size, not an Ultralytics model (``backbone``/``head`` lists ending in a head whose task Ultralytics
    can tell: YOLO() fails on any other), or failing :func:`check_model_cfg`."""
    cfg = read_model_yaml(path)
    lists = isinstance(cfg, dict) and all(isinstance(cfg.get(k), list) for k in ("backbone", "head"))
    if not lists:
        raise ValueError(
            f"model YAML {path} is not an Ultralytics model: it needs 'backbone' and 'head' lists of rows"
        )
    from ultralytics.nn.tasks import guess_model_task

    if guess_model_task(cfg) is None:  # Ultralytics' own rule: the last head row's module name
        last = cfg["head"][-1] if cfg["head"] else None
        module = last[2] if isinstance(last, list | tuple) and len(last) == 4 else last
        raise ValueError(
            f"model YAML {path}: its last head row ({_short(module)}) is not a head whose task "
            "Ultralytics can tell; end head: with Detect, v10Detect, Segment, Pose, OBB or Classify"
        )
    check_model_cfg(cfg, f"model YAML {path}")


def _yaml_children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def expanded_size(root: Any, children: Callable[[Any], list[Any]], source: str) -> int:
    """Nodes of ``root`` as a tree (shared nodes counted at each use), computed in time linear in the number
    of distinct nodes; ValueError naming ``source`` beyond ``MAX_YAML_NODES`` or for a cycle."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            sizes[key] = 1 + sum(sizes[id(c)] for c in children(node))
            if sizes[key] > MAX_YAML_NODES:
                raise ValueError(
                    f"{source} expands to more than {MAX_YAML_NODES:,} nodes (nested aliases or shared "
                    "references); refused"
                )
        elif key not in sizes:
            sizes[key] = -1  # in progress: meeting it again below itself is a cycle
            stack.append((node, True))
            for child in children(node):
                if sizes.get(id(child)) == -1:
                    raise ValueError(f"{source} refers to itself (a recursive alias or reference); refused")
                if id(child) not in sizes:
                    stack.append((child, False))
    return sizes[id(root)]


def _data_children(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [part for pair in obj.items() for part in pair]
    return list(obj) if isinstance(obj, list | tuple) else []


def _short(value: Any) -> str:
    return shorten(repr(value), 60)


def _bounded(source: str, field: str, value: Any, low: float, high: float, kind: type = int) -> None:
    """ValueError naming ``field`` unless ``value`` is a number of ``kind`` (int: an int, not a bool)
    within ``[low, high]``."""
    kinds = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "an integer" if kind is int else "a number"
        raise ValueError(
            f"{source}: {field}={_short(value)} must be {what} in [{low:g}, {high:g}] (a file may not size a "
            "model beyond that)"
        )


def check_model_cfg(cfg: Any, source: str = "model YAML") -> nn.Module | None:
    """Check a model description read from a file (a YAML or a checkpoint's ``model.yaml``) before anything
    is built from it; returns the ``activation:`` module (None when unset).

    No text is evaluated: ``activation:`` and every string argument go through ``reparam.blocks.act``'s
    resolver or must be plain names or literals; module names must name ``nn.Module`` classes; every value
    that sizes the model (nc, channels, multiples, repeats, keypoints, rows) is bounded. ValueError names
    the field.
    """
    from reparam.blocks.act import resolve_act

    if not isinstance(cfg, dict):
        raise ValueError(f"{source} is not a mapping of model settings (it is {type(cfg).__name__})")
    expanded_size(cfg, _data_children, source)
    act = cfg.get("activation")
    module = None
    if act is not None and act is not False:
        if not isinstance(act, str):
            raise ValueError(
                f"{source}: activation={_short(act)} must be an activation name or nn.<Name>(...)"
            )
        try:
            module = _probe(lambda: resolve_act(act), 10_000, f"{source}: activation")
        except ValueError as e:
            raise ValueError(
                f"{source} activation: {_short(act)} is not an activation module: {first_line(e)}"
            ) from None
    if "nc" in cfg:
        _bounded(source, "nc", cfg["nc"], 1, MAX_NC)
    for key in ("depth_multiple", "width_multiple"):
        if key in cfg:
            _bounded(source, key, cfg[key], 1e-3, MAX_MULTIPLE, float)
    for key in ("channels", "ch"):
        if key in cfg:
            _bounded(source, key, cfg[key], 1, MAX_INPUT_CHANNELS)
    if "reg_max" in cfg:
        _bounded(source, "reg_max", cfg["reg_max"], 1, 256)
    if cfg.get("kpt_shape") is not None:
        kpt = cfg["kpt_shape"]
        if not (isinstance(kpt, list | tuple) and len(kpt) == 2):
            raise ValueError(f"{source}: kpt_shape={_short(kpt)} must be [keypoints, 2 or 3]")
        _bounded(source, "kpt_shape[0]", kpt[0], 1, MAX_KEYPOINTS)
        _bounded(source, "kpt_shape[1]", kpt[1], 2, 3)
    depth, width = cfg.get("depth_multiple", 1.0), cfg.get("width_multiple", 1.0)
    max_channels = float("inf")
    scales = cfg.get("scales")
    if scales:
        if not isinstance(scales, dict):
            raise ValueError(
                f"{source}: scales={_short(scales)} must map a scale name to [depth, width, channels]"
            )
        for name, value in scales.items():
            field = f"scales[{name!r}]"
            if not (isinstance(value, list | tuple) and len(value) == 3):
                raise ValueError(f"{source}: {field}={_short(value)} must be [depth, width, max_channels]")
            _bounded(source, f"{field} depth", value[0], 1e-3, MAX_MULTIPLE, float)
            _bounded(source, f"{field} width", value[1], 1e-3, MAX_MULTIPLE, float)
            _bounded(source, f"{field} max_channels", value[2], 1, MAX_CHANNELS, float)
        scale = cfg.get("scale") or next(iter(scales))
        if scale in scales:
            depth, width, max_channels = scales[scale]
    _check_rows_of(cfg, source, depth, width, max_channels)
    return module


def _check_rows_of(cfg: dict, source: str, depth: float, width: float, max_channels: float) -> None:
    rows: list[Any] = []
    for part in ("backbone", "head"):
        value = cfg.get(part, [])
        if not isinstance(value, list):
            raise ValueError(f"{source}: {part} must be a list of rows [from, repeats, module, args]")
        rows += [(f"{part} row {i}", row) for i, row in enumerate(value)]
    if len(rows) > MAX_ROWS:
        raise ValueError(f"{source} has {len(rows)} rows; at most {MAX_ROWS} are accepted")
    for where, row in rows:
        if not (isinstance(row, list | tuple) and len(row) == 4):
            raise ValueError(f"{source}: {where} {_short(row)} must be [from, repeats, module, args]")
        _, n, name, args = row
        _bounded(source, f"{where} repeats", n, 1, 10_000)
        if n > 1:
            _bounded(source, f"{where} repeats x depth_multiple", max(round(n * depth), 1), 1, MAX_REPEATS)
        if not isinstance(name, str):
            raise ValueError(f"{source}: {where} module={_short(name)} must be a module name")
        cls = _layer(name)
        if cls is not None and not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(
                f"{source}: {where} module={_short(name)} is not a model layer (an nn.Module class)"
            )
        if not isinstance(args, list | tuple):
            raise ValueError(f"{source}: {where} args={_short(args)} must be a list")
        for j, arg in enumerate(args):
            _check_arg(source, f"{where} args[{j}]", arg)
        first = args[0] if args else None
        if isinstance(first, int | float) and not isinstance(first, bool) and first > 0:
            _bounded(source, f"{where} channels (args[0] x width)", min(first, max_channels) * width, 0,
                     MAX_CHANNELS, float)  # fmt: skip


def _check_arg(source: str, field: str, arg: Any) -> None:
    """An argument of a row: a number within ``MAX_CHANNELS``, a plain name or literal, or an activation."""
    import ast

    from reparam.blocks.act import resolve_act

    if isinstance(arg, bool) or arg is None:
        return
    if isinstance(arg, int | float):
        _bounded(source, field, arg, -MAX_CHANNELS, MAX_CHANNELS, float)
    elif isinstance(arg, str):
        if _PLAIN_WORD.fullmatch(arg):
            return
        try:
            value = ast.literal_eval(arg)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            try:
                _probe(lambda: resolve_act(arg), 10_000, f"{source}: {field}")
            except ValueError:
                raise ValueError(
                    f"{source}: {field}={_short(arg)} is neither a name, a literal nor an activation such as "
                    "nn.ReLU() (text from a file is never evaluated)"
                ) from None
        else:
            _check_arg(source, field, value)
    elif isinstance(arg, list | tuple):
        for k, item in enumerate(arg):
            _check_arg(source, f"{field}[{k}]", item)


def _layer(name: str) -> Any:
    """What parse_model makes of a YAML module name (None: unknown, parse_model names it)."""
    import ultralytics.nn.tasks as tasks

    if name.startswith("nn."):
        return getattr(nn, name[3:], None)
    if name.startswith("torchvision.ops."):
        try:
            return getattr(importlib.import_module("torchvision.ops"), name[16:], None)
        except ImportError:
            return None
    return vars(tasks).get(name)


def _probe(build: Callable[[], nn.Module], max_params: int, what: str) -> nn.Module:
    """``build()`` once on the meta device (no memory) to count its parameters, then for real."""
    with torch.device("meta"):
        probe = build()
    params = sum(p.numel() for p in probe.parameters())
    if params > max_params:
        raise ValueError(f"{what} would hold {params:,} parameters (at most {max_params:,})")
    return build()
