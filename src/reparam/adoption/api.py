"""``adopt``: start re-parameterizable training from trained weights by replacing a model's convolutions."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reparam.adoption.families import build_block
from reparam.adoption.report import AdoptCheckError, AdoptedLayer, AdoptReport, SkippedLayer
from reparam.adoption.units import FAMILIES, Unit, _join, compile_where, find_units, unsupported
from reparam.checks import strict_bools
from reparam.verification import default_rtol, relative_error

__all__ = ["adopt"]

Where = None | Callable[[str, nn.Module], bool] | Mapping[str, Any]
_SPATIAL = 64  # default random-input size: small, and divisible by the 32 of detector strides


def _source(unit: Unit) -> str:
    kind = type(unit.module).__name__
    return f"{kind}+{type(unit.bn).__name__}" if unit.bn_attr is not None else kind


def _note(unit: Unit) -> str:
    if unit.bn is None:
        return "no BN: block BN starts as identity + conv bias (normalises batches in training)"
    if unit.kind in ("sequential", "named-pair"):
        return f"BN {unit.bn_attr} -> Identity; activation stays outside"
    return ""


def _keep_attributes(old: nn.Module, new: nn.Module) -> None:
    """Carry plain attributes a framework set on the old module (Ultralytics' i, f, type, np)."""
    for key, value in vars(old).items():
        if not key.startswith("_") and key != "training" and key not in vars(new):
            setattr(new, key, value)


Undo = list[tuple[nn.Module, str, nn.Module]]  # (parent, child name, the child before) to put back


def _replace(unit: Unit, block: nn.Module, undo: Undo) -> None:
    if unit.kind == "conv-module":
        _keep_attributes(unit.module, block)
    if unit.parent is not None:
        undo.append((unit.parent, unit.attr, unit.module))
        setattr(unit.parent, unit.attr, block)
    if unit.bn_attr is not None:
        undo.append((unit.parent, unit.bn_attr, getattr(unit.parent, unit.bn_attr)))
        setattr(unit.parent, unit.bn_attr, nn.Identity().train(unit.module.training))


def _restore(undo: Undo) -> None:
    """Put every replaced child back, last change first: the model is as it was before adopt."""
    for parent, attr, old in reversed(undo):
        setattr(parent, attr, old)


def _places(model: nn.Module) -> dict[int, list[str]]:
    """id(module) -> every path it is reachable under (a module used twice has two)."""
    places: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        places.setdefault(id(m), []).append(name)
    return places


def _parts(unit: Unit) -> dict[int, str]:
    """id -> path of the conv and BN this unit holds."""
    if unit.kind == "conv-module":
        parts = {id(unit.conv): _join(unit.name, "conv")}
        return parts | ({id(unit.bn): _join(unit.name, "bn")} if unit.bn is not None else {})
    parts = {id(unit.conv): unit.name}
    if unit.bn_attr is not None:
        parts[id(unit.bn)] = _join(unit.name.rpartition(".")[0], unit.bn_attr)
    return parts


def _ties(model: nn.Module, chosen: list[Unit]) -> list[list[Unit]]:
    """The chosen units grouped by shared conv (weight tying); one adopted block will serve each group.

    A tie is kept only when every place of the shared conv and BN is a chosen unit of the same form;
    otherwise adopting would untie it, and ValueError names all the places.
    """
    places = _places(model)
    groups: dict[int, list[Unit]] = {}
    for unit in chosen:
        groups.setdefault(id(unit.conv), []).append(unit)
    for group in groups.values():
        used = {path for key in _parts(group[0]) for path in places.get(key, [])}
        covered = {path for unit in group for path in _parts(unit).values()}
        forms = {(id(u.module), id(u.bn), u.kind) for u in group}
        if len(forms) > 1 or used != covered:
            where = ", ".join(repr(p) for p in sorted(used | covered))
            raise ValueError(
                f"where: the conv of {group[0].name!r} is shared (weight tying): it is used at {where}; "
                "adopting it at only some places, or with different BNs, would untie it: select every place "
                "(the same Conv2d(+BN)(+act) each time) or none"
            )
    return list(groups.values())


def _unit_forward(unit: Unit, x: Tensor) -> Tensor:
    """What the replaced layer computed: the Conv-like module, conv then its paired BN, or the conv."""
    if unit.kind == "conv-module":
        return unit.module(x)
    return unit.bn(unit.conv(x)) if unit.bn is not None else unit.conv(x)


@torch.no_grad()
def _failure(report: AdoptReport, target: nn.Module, x: Tensor, adopted: list[tuple[Unit, nn.Module]]) -> str:
    """Why adoption is refused, naming the units whose block differs from the layer it replaced (on the
    input the block saw), else the position/name pairings the model's forward does not follow."""
    seen: dict[int, Tensor] = {}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.setdefault(id(module), args[0])

    hooks = [block.register_forward_pre_hook(record) for _, block in adopted]
    try:
        _eval_output(target, x)
    finally:
        for hook in hooks:
            hook.remove()
    bad = []
    for unit, block in adopted:
        if id(block) not in seen:
            continue
        old = [unit.module, unit.conv, block] + ([unit.bn] if unit.bn is not None else [])
        with _eval_modes(*old):
            rel = relative_error(_unit_forward(unit, seen[id(block)]), block(seen[id(block)]))[1]
        if not rel <= report.rtol:
            bad.append(f"{unit.name or '<model>'} (rel error {rel:.3g})")
    if not bad:
        paired = [u.name for u, _ in adopted if u.bn_attr is not None] or [u.name for u, _ in adopted]
        bad = [
            f"{', '.join(paired)} (each block matches its layer, so the model's forward does not apply "
            "these layers as conv -> BN where they sit)"
        ]
    return (
        f"adopt(to={report.to!r}) refused: the adopted model does not compute the original's function "
        f"(max rel error {report.max_rel_error:.3g} > {report.rtol:g}); the model is unchanged. "
        f"Unit(s): {'; '.join(bad)}. Leave them out with where=."
    )


def _first_param(model: nn.Module) -> Tensor:
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError("model has no parameters: nothing to adopt")
    return p


def _input(model: nn.Module, units: list[Unit], input_shape: Sequence[int] | None) -> Tensor:
    if input_shape is None:
        if not units:
            raise ValueError(
                "input_shape is needed: the model has no Conv2d to infer the input channels from"
            )
        input_shape = (2, units[0].conv.in_channels, _SPATIAL, _SPATIAL)
    shape = tuple(input_shape)
    if not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(f"input_shape must be positive ints, got {input_shape!r}")
    p = _first_param(model)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=p.device, dtype=p.dtype)


@contextlib.contextmanager
def _eval_modes(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode inside; every submodule's own train/eval flag restored afterwards."""
    flags = [(m, m.training) for mod in modules for m in mod.modules()]
    for mod in modules:
        mod.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@torch.no_grad()
def _eval_output(model: nn.Module, x: Tensor) -> Any:
    """The model's eval-mode output on ``x``; every module's own train/eval flag is restored afterwards."""
    with _eval_modes(model):
        try:
            return model(x)
        except Exception as err:
            raise ValueError(
                f"input_shape={tuple(x.shape)}: the model failed on a random input of this shape "
                f"({type(err).__name__}: {err}); call reparam.adopt(model, to, input_shape=...) from Python "
                "with a shape the model accepts"
            ) from err


def _plan(
    units: list[Unit], to: str, where: Where
) -> tuple[list[Unit], list[SkippedLayer], list[SkippedLayer]]:
    """Units to replace, selected units that cannot be, and units the selection left out."""
    select = compile_where(where)
    chosen: list[Unit] = []
    skipped: list[SkippedLayer] = []
    left: list[SkippedLayer] = []
    for unit in units:
        why_not = select(unit)
        if why_not is not None:
            left.append(SkippedLayer(unit.name, _source(unit), why_not))
            continue
        why = unsupported(unit, to)
        if why is None:
            chosen.append(unit)
        elif where is None:  # the default selects what the family supports
            left.append(SkippedLayer(unit.name, _source(unit), f"{to} cannot adopt it: {why}"))
        else:
            skipped.append(SkippedLayer(unit.name, _source(unit), why))
    return chosen, skipped, left


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@strict_bools
def adopt(
    model: nn.Module,
    to: str,
    where: Where = None,
    inplace: bool = False,
    input_shape: Sequence[int] | None = None,
) -> tuple[nn.Module, AdoptReport]:
    """Replace selected Conv2d(+BN)(+act) layers of ``model`` by ``to`` blocks computing the same function.

    ``to``: 'repvgg', 'qarepvgg', 'dbb', 'orepa' or 'dynamic' (DynamicConvBNAct, 4 experts). ``where``:
    None selects every 3x3 conv (groups 1, dilation 1, any stride) the family can adopt exactly (the
    Ultralytics zoo-YAML default belongs to the yolo layer); a callable ``(name, module) -> bool``; or a
    dict with keys ``types`` (classes), ``names`` (globs or compiled regexes, full-name match),
    ``kernel`` and ``stride`` (int or collection). Returns the new model (a deep copy unless ``inplace``)
    and an :class:`AdoptReport` whose error compares both models in eval mode on a random input of
    ``input_shape`` (default ``(2, c1 of the first conv, 64, 64)``).
    """
    if to not in FAMILIES:
        raise ValueError(f"to={to!r} is not a block family; choose one of {list(FAMILIES)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    compile_where(where)  # bad where fails before any work
    x = _input(model, find_units(model), input_shape)
    reference = _eval_output(model, x)
    before = _count(model)
    target = model if inplace else copy.deepcopy(model)
    chosen, skipped, left = _plan(find_units(target), to, where)
    groups = _ties(target, chosen)
    layers: list[AdoptedLayer] = []
    adopted: list[tuple[Unit, nn.Module]] = []
    undo: Undo = []
    try:  # on any failure the model (the caller's, with inplace=True) gets every replaced child back
        for group in groups:
            block, read = build_block(group[0], to)
            adopted.append((group[0], block))
            for unit in group:
                _replace(unit, block, undo)
                target = block if unit.parent is None else target
                k, s = unit.conv.kernel_size[0], unit.conv.stride[0]
                note = _note(unit) if unit is group[0] else f"tied: the same block as {group[0].name!r}"
                n = read if unit is group[0] else 0
                layers.append(AdoptedLayer(unit.name, _source(unit), type(block).__name__, k, s, n, note))
        abs_err, rel_err = relative_error(reference, _eval_output(target, x))
        rtol = default_rtol(x.dtype)
        report = AdoptReport(
            to, layers, skipped, left, before, _count(target), tuple(x.shape), abs_err, rel_err, rtol
        )
        if layers and not report.ok:
            raise AdoptCheckError(_failure(report, target, x, adopted), report)
    except BaseException:
        _restore(undo)
        raise
    return target, report
