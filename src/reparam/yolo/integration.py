"""Make reparam blocks usable in Ultralytics model YAMLs without editing Ultralytics.

``parse_model`` looks a YAML module name up in ``ultralytics.nn.tasks`` globals and decides channel and
repeat handling with frozensets built inside the function, so injecting globals is not enough. We rebuild
``parse_model`` from its own source with four AST edits, executed in the ``tasks`` namespace:

* ``base_modules = frozenset(...)`` becomes ``frozenset(...) | _reparam_base_modules`` (``"conv"`` and
  ``"repeat"`` blocks: input channels injected, c2 width-scaled and capped by max_channels);
* ``repeat_modules = frozenset(...)`` becomes ``frozenset(...) | _reparam_repeat_modules`` (``"repeat"``
  blocks also receive the depth-scaled n as third argument);
* the final ``else: c2 = ch[f]`` gains a branch for ``"custom"`` blocks, whose rule computes the arguments;
* every call ``m(*args)`` becomes ``_reparam_builders.get(m, m)(*args)``: a reparam block is constructed by
  its registry ``build`` (e.g. ``OREPA`` rows with k=1 build an ``OREPA_1x1``) while ``m`` stays the class,
  so the type string, the frozenset membership and every ``m is X`` test of Ultralytics are unchanged.
  Of the options for that last step (a 4th edit, a class-level ``__new__``/metaclass factory, a wrapper
  class registered in place of the block) the edit is the least fragile: it touches only calls of the
  local name ``m``, which every release since 8.0 uses, and needs no change to the block classes.

Alternatives weighed for the whole: injecting globals alone gives wrong channels (c2 = ch[f], raw args);
a copy of parse_model drifts from each Ultralytics release; textual source replacement breaks on
reformatting; classes that hash equal to ``Conv`` would corrupt every set and dict keyed by class. Editing
the AST of the installed function keeps every built-in rule of that release and fails loudly if its shape
changes. The edited source is registered with ``linecache`` under ``PATCHED_FILENAME``, so tracebacks
through it show its lines.

Around each call the wrapper (1) syncs the block registry into the tables, so a block registered at any
time is usable in the next build; (2) sets the default activation of reparam blocks to the model's
``activation:`` key, resolved by ``reparam.yolo.safety.check_model_cfg`` (never ``eval``; SiLU when the key
is absent), which also checks every row and bounds what the file sizes, and the meta-device build bounds the
parameter count;
(3) re-raises any exception of a YAML row as ValueError naming the row, with a suggestion for unknown
names. Supported: Ultralytics 8.3 and 8.4 (tested end to end with 8.4.190; the edits also apply to the
parse_model of 8.3.0, which tests set literals, and of 8.3.100); another source layout fails loudly at
registration naming the version.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import difflib
import functools
import importlib
import inspect
import linecache
import logging
import pkgutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType, FunctionType, ModuleType, TracebackType
from typing import Any

import torch
from torch import nn

import reparam.blocks
from reparam.blocks.act import use_default_act
from reparam.blocks.registry import registered_blocks
from reparam.yolo.safety import MAX_PARAMS, check_model_cfg

__all__ = [
    "CUSTOM_RULES",
    "PATCHED_FILENAME",
    "patch_parse_model",
    "register_blocks",
    "register_safe_globals",
    "unknown_module_message",
]

SUPPORTED_RANGE = (
    ">=8.3.0,<8.5 (end to end on 8.4.190; YAML build, fuse conversion and row errors on 8.3.0 and 8.3.100)"
)
PATCHED_FILENAME = "<reparam-patched ultralytics.nn.tasks.parse_model>"
"""The file name tracebacks show for frames of the rebuilt parse_model (its source is in linecache)."""
_ORIGINAL = "_reparam_original_parse_model"
_NOT_OREPA = (
    "OREPAConv: did you mean OREPA? the post's OREPAConv is not the paper's block (a ReLU inside a branch, "
    "unfusable); reparam's OREPA is the paper's"
)


def _scaled(c2: int, width: float, max_channels: float) -> int:
    """Ultralytics' own width rule: ``make_divisible(min(c2, max_channels) * width, 8)``."""
    from ultralytics.utils.ops import make_divisible

    return make_divisible(min(c2, max_channels) * width, 8)


def _multi_input_rule(
    ch: list[int], f: int | list[int], n: int, args: list[Any], width: float, max_channels: float
) -> tuple[int, list[Any], int]:
    """``(from=[a, b, ...], args=[c2, *rest])`` -> ``Block([ch[a], ch[b], ...], c2', *rest)`` (e.g. BiC)."""
    if not isinstance(f, list):
        raise ValueError(f"'from' must list the input layers (e.g. [-1, 6, 4]), got {f!r}")
    c2 = _scaled(args[0], width, max_channels)
    return c2, [[ch[x] for x in f], c2, *args[1:]], n


# Explicit rules for "custom" blocks, by registered name: (ch, from, n, args, width, max_channels)
# -> (c2, constructor args, n). A custom block without a rule is refused at the next YAML build.
CUSTOM_RULES: dict[str, Callable[..., tuple[int, list[Any], int]]] = {"BiC": _multi_input_rule}


@functools.cache
def _import_block_families() -> None:
    """Import every module of ``reparam.blocks`` so that each family's registration line has run."""
    for info in pkgutil.iter_modules(reparam.blocks.__path__):
        importlib.import_module(f"reparam.blocks.{info.name}")


def _names(node: ast.AST) -> set[str]:
    return {e.id for e in node.elts if isinstance(e, ast.Name)} if isinstance(node, ast.Set) else set()


def _extended(node: ast.expr, table: str) -> ast.BinOp:
    return ast.BinOp(left=node, op=ast.BitOr(), right=ast.Name(id=f"_reparam_{table}", ctx=ast.Load()))


def _is_m_in(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "m"
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.In)
    )


class _ParseModelEditor(ast.NodeTransformer):
    """The four AST edits described in the module docstring; counts what it found.

    Two layouts are known: 8.3.x (later releases) and 8.4 assign ``base_modules``/``repeat_modules``
    frozensets; early 8.3 releases test ``m in {Classify, Conv, ...}`` and, inside that branch,
    ``m in {BottleneckCSP, C1, ...}`` against set literals.
    """

    def __init__(self) -> None:
        self.found: dict[str, int] = {"base_modules": 0, "repeat_modules": 0, "else": 0, "build": 0}

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        self.generic_visit(node)
        target = node.targets[0] if len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id in ("base_modules", "repeat_modules"):
            self.found[target.id] += 1
            node.value = _extended(node.value, target.id)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "m":
            self.found["build"] += 1
            node.func = ast.parse("_reparam_builders.get(m, m)", mode="eval").body
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        self.generic_visit(node)
        if not _is_m_in(node.test):
            return node
        target = node.test.comparators[0]
        literal = _names(target)
        if {"BottleneckCSP", "C2f"} <= literal and "Conv" not in literal:  # early 8.3 repeat set
            node.test.comparators[0] = _extended(target, "repeat_modules")
            self.found["repeat_modules"] += 1
            return node
        if {"Conv", "C2f"} <= literal:  # early 8.3 base set
            node.test.comparators[0] = _extended(target, "base_modules")
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

    def missing(self) -> list[str]:
        """The edits that did not apply as expected (each exactly once; ``m(...)`` calls at least once)."""
        return [k for k, v in self.found.items() if (v < 1 if k == "build" else v != 1)]


def _ultralytics_version() -> str:
    import ultralytics

    return ultralytics.__version__


def _build_patched(original: FunctionType, tasks: ModuleType) -> FunctionType:
    """Compile the edited parse_model in the ``tasks`` namespace; its source goes to linecache."""
    editor = _ParseModelEditor()
    tree = editor.visit(ast.parse(textwrap.dedent(inspect.getsource(original))))
    missing = editor.missing()
    if missing:
        raise RuntimeError(
            f"reparam cannot register its blocks with ultralytics {_ultralytics_version()}: parse_model no "
            f"longer has the expected structure ({', '.join(missing)} not found as expected). "
            f"Supported ultralytics: {SUPPORTED_RANGE}."
        )
    source = ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    linecache.cache[PATCHED_FILENAME] = (len(source), None, source.splitlines(True), PATCHED_FILENAME)
    namespace: dict[str, Any] = {}
    exec(compile(source, PATCHED_FILENAME, "exec"), tasks.__dict__, namespace)
    return namespace[original.__name__]


def unknown_module_message(name: str) -> str:
    """Why YAML module ``name`` is unknown, with the closest registered reparam name when there is one."""
    if name == "OREPAConv":
        return _NOT_OREPA
    known = sorted(registered_blocks())
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"reparam blocks: {', '.join(known)}"
    return f"unknown module {name!r}: neither an Ultralytics module nor a registered reparam block; {hint}"


def _row_error(err: BaseException, code: CodeType, rows: list[Any], yaml_file: str) -> ValueError | None:
    """``err`` raised while building a YAML row, as ValueError naming the row (None: not inside a row)."""
    tb: TracebackType | None = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code and "i" in tb.tb_frame.f_locals:
            i = tb.tb_frame.f_locals["i"]
            row = rows[i] if isinstance(i, int) and i < len(rows) else "?"
            where = f" of {yaml_file}" if yaml_file else ""
            name = row[2] if isinstance(row, list) and len(row) > 2 else None
            unknown = isinstance(err, KeyError) and err.args == (name,) and name not in registered_blocks()
            reason = unknown_module_message(name) if unknown else f"{type(err).__name__}: {err}"
            return ValueError(f"model YAML row {i}{where} {row}: {reason}")
        tb = tb.tb_next
    return None


def _check_rows(d: dict, rows: list[Any], yaml_file: str) -> None:
    """ValueError naming a reparam row whose output channels (first argument, which Ultralytics scales
    before the block sees it) are not a positive number; Ultralytics would fail comparing it to an int."""
    where = f" of {yaml_file}" if yaml_file else ""
    specs = registered_blocks()
    for i, row in enumerate(rows):
        name = row[2] if isinstance(row, list) and len(row) == 4 else None
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None or spec.signature == "custom" or not isinstance(row[3], list) or not row[3]:
            continue
        c2 = row[3][0]
        if isinstance(c2, str):
            with contextlib.suppress(ValueError, SyntaxError):  # as Ultralytics: a name or a literal
                c2 = d[c2] if c2 in d else ast.literal_eval(c2)
        if isinstance(c2, bool) or not isinstance(c2, int | float) or not c2 > 0:
            raise ValueError(
                f"model YAML row {i}{where} {row}: c2={row[3][0]!r} (the first argument, output channels) "
                "must be a positive number"
            )


@contextlib.contextmanager
def _no_eval(tasks: ModuleType, act: nn.Module | None) -> Iterator[None]:
    """Ultralytics' ``Conv.default_act`` set to the checked activation (parse_model gets no ``activation:``
    text to ``eval``) and its restricted build mode on (only ``nn.Module`` layers), both restored on exit."""
    conv = tasks.Conv
    saved = conv.default_act
    local = getattr(getattr(tasks, "_SafeLoad", None), "_local", None)
    was = getattr(local, "active", False)
    if act is not None:
        conv.default_act = act
    if local is not None:
        local.active = True
    try:
        yield
    finally:
        conv.default_act = saved
        if local is not None:
            local.active = was


def _check_budget(patched: Callable[..., Any], d: dict, ch: int, source: str) -> None:
    """Build the rows once on the meta device (no memory) and refuse more than ``MAX_PARAMS`` parameters."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.ERROR)  # its warnings (e.g. "no model scale") come once, from the real build
    try:
        with torch.device("meta"):  # a row that fails fails here, before any real row has taken memory
            layers, _ = patched(copy.deepcopy(d), ch, False)
    finally:
        LOGGER.setLevel(level)
    params = sum(p.numel() for p in layers.parameters())
    if params > MAX_PARAMS:
        biggest = max(layers, key=lambda m: sum(p.numel() for p in m.parameters()))
        raise ValueError(
            f"{source} would build {params:,} parameters (at most {MAX_PARAMS:,} from a file); the largest "
            f"row is {getattr(biggest, 'i', '?')} ({type(biggest).__name__})"
        )


def patch_parse_model() -> None:
    """Replace ``ultralytics.nn.tasks.parse_model`` by the rebuilt one (idempotent)."""
    import ultralytics.nn.tasks as tasks

    if getattr(tasks.parse_model, "_reparam_patched", False):
        return
    original = getattr(tasks, _ORIGINAL, None) or tasks.parse_model
    patched = _build_patched(original, tasks)
    code = patched.__code__

    @functools.wraps(original)
    def parse_model(d: dict, ch: int, verbose: bool = True) -> tuple[nn.Sequential, list[int]]:
        _sync_registry(tasks)
        yaml_file = str(d.get("yaml_file", ""))
        source = f"model YAML {yaml_file}" if yaml_file else "model YAML"
        act = check_model_cfg(d, source)  # the one check of every model built from a file's text
        rows = copy.deepcopy(list(d.get("backbone", [])) + list(d.get("head", [])))
        _check_rows(d, rows, yaml_file)
        d = {k: v for k, v in d.items() if k != "activation"}  # resolved above; Ultralytics would eval it
        try:
            with _no_eval(tasks, act), use_default_act(nn.SiLU() if act is None else act):
                _check_budget(patched, d, ch, source)
                return patched(d, ch, verbose)
        except Exception as err:
            named = _row_error(err, code, rows, yaml_file)
            if named is None:
                raise
            raise named from err

    parse_model._reparam_patched = True  # type: ignore[attr-defined]
    setattr(tasks, _ORIGINAL, original)
    tasks.parse_model = parse_model


def _sync_registry(tasks: ModuleType) -> list[str]:
    """Rebuild the patched parse_model's tables and names from the block registry; returns the names.

    Names this function put into ``tasks`` earlier are replaced or removed with the registry; a name that
    Ultralytics itself defines is a clash.
    """
    _import_block_families()
    owned: set[str] = tasks.__dict__.get("_reparam_names", set())
    base: set[type] = set()
    repeat: set[type] = set()
    custom: dict[type, Callable[..., Any]] = {}
    builders: dict[type, Callable[..., nn.Module]] = {}
    specs = registered_blocks()
    for name, spec in specs.items():
        existing = tasks.__dict__.get(name)
        if existing is not None and existing is not spec.cls and name not in owned:
            raise RuntimeError(
                f"reparam block {name!r} clashes with {existing!r} already defined in ultralytics "
                f"{_ultralytics_version()}; supported ultralytics: {SUPPORTED_RANGE}"
            )
        if spec.signature == "custom":
            if spec.name not in CUSTOM_RULES:
                raise RuntimeError(
                    f"custom block {spec.name!r} has no Ultralytics YAML rule: add one to "
                    "reparam.yolo.integration.CUSTOM_RULES"
                )
            custom[spec.cls] = CUSTOM_RULES[spec.name]
        else:
            base.add(spec.cls)
        if spec.signature == "repeat":
            repeat.add(spec.cls)
        builders[spec.cls] = spec.build
    for stale in owned - specs.keys():
        tasks.__dict__.pop(stale, None)
    tasks.__dict__.update({name: spec.cls for name, spec in specs.items()})
    tasks.__dict__.update(
        _reparam_names=set(specs),
        _reparam_base_modules=base,
        _reparam_repeat_modules=repeat,
        _reparam_custom_rules=custom,
        _reparam_builders=builders,
    )
    return sorted(specs)


def register_blocks() -> list[str]:
    """Put every registered reparam block into the patched parse_model's tables; returns the YAML names.

    Needed once: the patched parse_model re-reads the registry at each call.
    """
    import ultralytics.nn.tasks as tasks

    names = _sync_registry(tasks)
    patch_parse_model()
    return names


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
