"""Make reparam blocks usable in Ultralytics model YAMLs without editing Ultralytics.

``parse_model`` looks a YAML module name up in ``ultralytics.nn.tasks`` globals and decides channel and
repeat handling with frozensets built inside the function, so injecting globals is not enough. We rebuild
``parse_model`` from its own source with three AST edits, executed in the ``tasks`` namespace:

* ``base_modules = frozenset(...)`` becomes ``frozenset(...) | _reparam_base_modules`` (``"conv"`` and
  ``"repeat"`` blocks: input channels injected, c2 width-scaled and capped by max_channels);
* ``repeat_modules = frozenset(...)`` becomes ``frozenset(...) | _reparam_repeat_modules`` (``"repeat"``
  blocks also receive the depth-scaled n as third argument);
* the final ``else: c2 = ch[f]`` gains a branch for ``"custom"`` blocks, whose rule computes the arguments.

Alternatives weighed: injecting globals alone gives wrong channels (c2 = ch[f], raw args); a copy of
parse_model drifts from each Ultralytics release; textual source replacement breaks on reformatting;
classes that hash equal to ``Conv`` would corrupt every set and dict keyed by class. Editing the AST of
the installed function keeps every built-in rule of that release and fails loudly if its shape changes.

The sets are live globals, so a block registered later only needs ``register()`` again. Any exception
raised while a YAML row is built is re-raised as ValueError naming the row. Supported: Ultralytics 8.3
and 8.4 (tested end to end with 8.4.190; the edits also apply to the parse_model of 8.3.0, which tests
set literals, and of 8.3.100); another source layout fails loudly at registration naming the version.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import inspect
import pkgutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FunctionType, TracebackType
from typing import Any

import torch
from torch import nn

import reparam.blocks
from reparam.blocks.registry import BlockSpec, registered_blocks
from reparam.models.yolov6 import scale_channels

__all__ = ["CUSTOM_RULES", "patch_parse_model", "register_blocks", "register_safe_globals"]

SUPPORTED_RANGE = (
    ">=8.3.0,<8.5 (end to end on 8.4.190; YAML build, fuse conversion and row errors on 8.3.0 and 8.3.100)"
)
_ORIGINAL = "_reparam_original_parse_model"


def _scaled(c2: int, width: float, max_channels: float) -> int:
    """Ultralytics' width rule: ``make_divisible(min(c2, max_channels) * width, 8)``."""
    return scale_channels(min(c2, max_channels), width)


def _multi_input_rule(
    ch: list[int], f: int | list[int], n: int, args: list[Any], width: float, max_channels: float
) -> tuple[int, list[Any], int]:
    """``(from=[a, b, ...], args=[c2, *rest])`` -> ``Block([ch[a], ch[b], ...], c2', *rest)`` (e.g. BiC)."""
    if not isinstance(f, list):
        raise ValueError(f"'from' must list the input layers (e.g. [-1, 6, 4]), got {f!r}")
    c2 = _scaled(args[0], width, max_channels)
    return c2, [[ch[x] for x in f], c2, *args[1:]], n


# Explicit rules for "custom" blocks, by registered name: (ch, from, n, args, width, max_channels)
# -> (c2, constructor args, n). A custom block without a rule is refused at registration.
CUSTOM_RULES: dict[str, Callable[..., tuple[int, list[Any], int]]] = {"BiC": _multi_input_rule}


def _import_block_families() -> None:
    """Import every module of ``reparam.blocks`` so that each family's registration line has run."""
    for info in pkgutil.iter_modules(reparam.blocks.__path__):
        importlib.import_module(f"reparam.blocks.{info.name}")


def _names(node: ast.AST) -> set[str]:
    return {e.id for e in node.elts if isinstance(e, ast.Name)} if isinstance(node, ast.Set) else set()


def _extended(node: ast.expr, table: str) -> ast.BinOp:
    return ast.BinOp(left=node, op=ast.BitOr(), right=ast.Name(id=f"_reparam_{table}", ctx=ast.Load()))


class _ParseModelEditor(ast.NodeTransformer):
    """The three AST edits described in the module docstring; counts what it found.

    Two layouts are known: 8.3.x (later releases) and 8.4 assign ``base_modules``/``repeat_modules``
    frozensets; early 8.3 releases test ``m in {Classify, Conv, ...}`` and, inside that branch,
    ``m in {BottleneckCSP, C1, ...}`` against set literals.
    """

    def __init__(self) -> None:
        self.found: dict[str, int] = {"base_modules": 0, "repeat_modules": 0, "else": 0}

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        target = node.targets[0] if len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id in ("base_modules", "repeat_modules"):
            self.found[target.id] += 1
            node.value = _extended(node.value, target.id)
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        self.generic_visit(node)
        test = node.test
        if not (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and test.left.id == "m"
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.In)
        ):
            return node
        target = test.comparators[0]
        literal = _names(target)
        if {"BottleneckCSP", "C2f"} <= literal and "Conv" not in literal:  # early 8.3 repeat set
            test.comparators[0] = _extended(target, "repeat_modules")
            self.found["repeat_modules"] += 1
            return node
        if {"Conv", "C2f"} <= literal:  # early 8.3 base set
            test.comparators[0] = _extended(target, "base_modules")
            self.found["base_modules"] += 1
        elif not (isinstance(target, ast.Name) and target.id == "base_modules"):
            return node
        last = node
        while len(last.orelse) == 1 and isinstance(last.orelse[0], ast.If):
            last = last.orelse[0]
        custom = ast.parse(
            "if m in _reparam_custom_rules:\n"
            "    c2, args, n = _reparam_custom_rules[m](ch, f, n, args, width, max_channels)\n"
        ).body[0]
        custom.orelse = last.orelse
        last.orelse = [custom]
        self.found["else"] += 1
        return node


def _ultralytics_version() -> str:
    import ultralytics

    return ultralytics.__version__


def _build_patched(original: FunctionType, tasks: Any) -> FunctionType:
    source = textwrap.dedent(inspect.getsource(original))
    tree = ast.parse(source)
    editor = _ParseModelEditor()
    tree = editor.visit(tree)
    missing = [k for k, v in editor.found.items() if v != 1]
    if missing:
        raise RuntimeError(
            f"reparam cannot register its blocks with ultralytics {_ultralytics_version()}: parse_model no "
            f"longer has the expected structure ({', '.join(missing)} not found exactly once). "
            f"Supported ultralytics: {SUPPORTED_RANGE}."
        )
    ast.fix_missing_locations(tree)
    code = compile(tree, filename=f"<reparam-patched {original.__module__}.parse_model>", mode="exec")
    namespace: dict[str, Any] = {}
    exec(code, tasks.__dict__, namespace)
    return namespace[original.__name__]


def _row_error(err: BaseException, code: CodeType, rows: list[Any], yaml_file: str) -> ValueError | None:
    tb: TracebackType | None = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code and "i" in tb.tb_frame.f_locals:
            i = tb.tb_frame.f_locals["i"]
            row = rows[i] if isinstance(i, int) and i < len(rows) else "?"
            where = f" of {yaml_file}" if yaml_file else ""
            name = row[2] if isinstance(row, list) and len(row) > 2 else None
            if isinstance(err, KeyError) and err.args and err.args[0] == name:
                reason = (
                    f"unknown module {name!r}: neither an Ultralytics module nor a registered reparam block "
                    f"({', '.join(sorted(registered_blocks()))})"
                )
            else:
                reason = f"{type(err).__name__}: {err}"
            return ValueError(f"model YAML row {i}{where} {row}: {reason}")
        tb = tb.tb_next
    return None


def patch_parse_model() -> None:
    """Replace ``ultralytics.nn.tasks.parse_model`` by the rebuilt one (idempotent)."""
    import ultralytics.nn.tasks as tasks

    original = getattr(tasks, _ORIGINAL, None) or tasks.parse_model
    if getattr(tasks.parse_model, "_reparam_patched", False):
        return
    patched = _build_patched(original, tasks)
    code = patched.__code__

    @functools.wraps(original)
    def parse_model(d: dict, ch: int, verbose: bool = True) -> tuple[nn.Sequential, list[int]]:
        rows = copy.deepcopy(list(d.get("backbone", [])) + list(d.get("head", [])))
        try:
            return patched(d, ch, verbose)
        except Exception as err:
            named = _row_error(err, code, rows, str(d.get("yaml_file", "")))
            if named is None:
                raise
            raise named from err

    parse_model._reparam_patched = True  # type: ignore[attr-defined]
    setattr(tasks, _ORIGINAL, original)
    tasks.parse_model = parse_model


def register_blocks() -> list[str]:
    """Put every registered reparam block into the patched parse_model's tables; returns the YAML names."""
    import ultralytics.nn.tasks as tasks

    _import_block_families()
    base: set[type] = tasks.__dict__.setdefault("_reparam_base_modules", set())
    repeat: set[type] = tasks.__dict__.setdefault("_reparam_repeat_modules", set())
    custom: dict[type, Callable[..., Any]] = tasks.__dict__.setdefault("_reparam_custom_rules", {})
    names = []
    for name, spec in sorted(registered_blocks().items()):
        existing = tasks.__dict__.get(name)
        if existing is not None and existing is not spec.cls:
            raise RuntimeError(
                f"reparam block {name!r} clashes with {existing!r} already defined in ultralytics "
                f"{_ultralytics_version()}; supported ultralytics: {SUPPORTED_RANGE}"
            )
        _add(spec, base, repeat, custom)
        tasks.__dict__[name] = spec.cls
        names.append(name)
    patch_parse_model()
    return names


def _add(spec: BlockSpec, base: set[type], repeat: set[type], custom: dict[type, Callable[..., Any]]) -> None:
    if spec.signature in ("conv", "repeat"):
        base.add(spec.cls)
    if spec.signature == "repeat":
        repeat.add(spec.cls)
    if spec.signature == "custom":
        if spec.name not in CUSTOM_RULES:
            raise RuntimeError(
                f"custom block {spec.name!r} has no Ultralytics YAML rule: add one to "
                "reparam.yolo.integration.CUSTOM_RULES"
            )
        custom[spec.cls] = CUSTOM_RULES[spec.name]


def register_safe_globals() -> list[type]:
    """Allow every module class of ``reparam.blocks`` in ``torch.load(weights_only=True)``.

    Ultralytics' ULTRALYTICS_SAFE_LOAD=1 loads with weights_only and its own allow-list; torch also accepts
    globals registered process-wide with ``add_safe_globals``, which is what we use. Returns the classes.
    """
    _import_block_families()
    classes = {spec.cls for spec in registered_blocks().values()}
    for info in pkgutil.iter_modules(reparam.blocks.__path__):
        module = importlib.import_module(f"reparam.blocks.{info.name}")
        classes.update(
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__.startswith("reparam.")
        )
    ordered = sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}")
    torch.serialization.add_safe_globals(ordered)
    return ordered


def cfg_dir() -> Path:
    """The directory of the shipped model-zoo YAMLs."""
    return Path(__file__).with_name("cfg")
