"""``adopt``: start re-parameterizable training from trained weights by replacing a model's convolutions."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reparam.adoption.families import build_block
from reparam.adoption.report import AdoptedLayer, AdoptReport, SkippedLayer
from reparam.adoption.units import FAMILIES, Unit, compile_where, find_units, unsupported
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


def _replace(unit: Unit, block: nn.Module) -> None:
    if unit.kind == "conv-module":
        _keep_attributes(unit.module, block)
    if unit.parent is not None:
        setattr(unit.parent, unit.attr, block)
    if unit.bn_attr is not None:
        setattr(unit.parent, unit.bn_attr, nn.Identity().train(unit.module.training))


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


@torch.no_grad()
def _eval_output(model: nn.Module, x: Tensor) -> Any:
    """The model's eval-mode output on ``x``; every module's own train/eval flag is restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(x)
    except Exception as err:
        raise ValueError(
            f"input_shape={tuple(x.shape)}: the model failed on a random input of this shape "
            f"({type(err).__name__}: {err}); pass input_shape= with a shape the model accepts"
        ) from err
    finally:
        for m, training in flags:
            m.training = training


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
    if not isinstance(inplace, bool):
        raise ValueError(f"inplace must be True or False, got {inplace!r}")
    compile_where(where)  # bad where fails before any work
    x = _input(model, find_units(model), input_shape)
    reference = _eval_output(model, x)
    before = _count(model)
    target = model if inplace else copy.deepcopy(model)
    chosen, skipped, left = _plan(find_units(target), to, where)
    layers = []
    for unit in chosen:
        block, read = build_block(unit, to)
        _replace(unit, block)
        if unit.parent is None:
            target = block
        k, s = unit.conv.kernel_size[0], unit.conv.stride[0]
        layers.append(AdoptedLayer(unit.name, _source(unit), type(block).__name__, k, s, read, _note(unit)))
    abs_err, rel_err = relative_error(reference, _eval_output(target, x))
    report = AdoptReport(
        to,
        layers,
        skipped,
        left,
        before,
        _count(target),
        tuple(x.shape),
        abs_err,
        rel_err,
        default_rtol(x.dtype),
    )
    return target, report
