"""Finding the Conv2d(+BN)(+activation) units of any model that adoption can replace, and selecting them.

A unit is one of: an Ultralytics-``Conv``-like module (children ``conv``, ``act`` and optionally ``bn``,
nothing else; duck-typed, so reparam's own ``ConvBNAct`` and a fused Ultralytics ``Conv`` count too), a
Conv2d -> BatchNorm2d pair of adjacent children of a plain ``nn.Sequential``, a ``conv<x>``/``bn<x>`` pair
of children of any other module (the torchvision naming, e.g. ResNet's ``conv1``/``bn1``), or a bare
Conv2d. Pairs found by position or name are a claim about the forward, which adoption proves with its
end-to-end equivalence check.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from reparam.blocks.base import ReparamBlock
from reparam.blocks.dynamic import DynamicConv, DynamicConvBNAct

__all__ = ["FAMILIES", "Selector", "Unit", "compile_where", "find_units", "unsupported"]

FAMILIES = ("repvgg", "qarepvgg", "dbb", "orepa", "dynamic")
WHERE_KEYS = ("types", "names", "kernel", "stride")
Selector = Callable[["Unit"], str | None]
"""Returns None when a unit is selected, else the reason it is not."""

_CONV_LIKE_CHILDREN = {"conv", "bn", "act"}
_BLOCKS = (ReparamBlock, DynamicConv, DynamicConvBNAct)


@dataclass
class Unit:
    """One replaceable Conv2d(+BN)(+act): where it sits and what it holds."""

    name: str  # path of the module that is replaced (the Conv-like module, else the Conv2d)
    kind: str  # 'conv-module', 'sequential', 'named-pair' or 'bare-conv'
    module: nn.Module  # the replaced module: the Conv-like module or the Conv2d
    parent: nn.Module | None  # None when the unit is the model itself
    attr: str  # child name of ``module`` in ``parent``
    conv: nn.Conv2d
    bn: nn.modules.batchnorm._BatchNorm | None
    act: nn.Module | None  # the Conv-like module's activation (moves into the block); else None
    bn_attr: str | None = None  # child name of a separate BN in ``parent`` (replaced by nn.Identity)


def _is_conv(m: Any) -> bool:
    return isinstance(m, nn.Conv2d)


def _bn_after(bn: Any, conv: nn.Conv2d) -> bool:
    return isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.num_features == conv.out_channels


def _conv_like(m: nn.Module) -> bool:
    children = dict(m.named_children())
    return (
        set(children) <= _CONV_LIKE_CHILDREN
        and "act" in children
        and _is_conv(children.get("conv"))
        and ("bn" not in children or _bn_after(children["bn"], children["conv"]))
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _children(module: nn.Module) -> dict[str, nn.Module]:
    """Every child by name, a module used under two names included (``named_children`` yields it once:
    a tied conv must be seen at each place it is used)."""
    return {name: child for name, child in module._modules.items() if child is not None}


def _pairs(module: nn.Module) -> Iterator[tuple[str, str]]:
    """(conv child, BN child) pairs of ``module``: adjacent in a plain Sequential, else conv<x>/bn<x>."""
    children = _children(module)
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        for a, b in itertools.pairwise(children):
            if _is_conv(children[a]) and _bn_after(children[b], children[a]):
                yield a, b
        return
    for a, conv in children.items():
        b = "bn" + a[4:]
        if a.startswith("conv") and _is_conv(conv) and _bn_after(children.get(b), conv):
            yield a, b


def _walk(module: nn.Module, prefix: str, units: list[Unit]) -> None:
    paired: dict[str, str] = {}
    for a, b in _pairs(module):
        if a not in paired and b not in paired.values() and b not in paired:
            paired[a] = b
    kind = "sequential" if isinstance(module, nn.Sequential) else "named-pair"
    bns = set(paired.values())
    for name, child in _children(module).items():
        path = _join(prefix, name)
        if name in paired:
            bn = getattr(module, paired[name])
            units.append(Unit(path, kind, child, module, name, child, bn, None, paired[name]))
        elif name in bns or isinstance(child, _BLOCKS):
            continue
        elif _conv_like(child):
            units.append(_conv_module_unit(child, path, module, name))
        elif _is_conv(child):
            units.append(Unit(path, "bare-conv", child, module, name, child, None, None))
        else:
            _walk(child, path, units)


def _conv_module_unit(m: nn.Module, path: str, parent: nn.Module | None, attr: str) -> Unit:
    return Unit(path, "conv-module", m, parent, attr, m.conv, getattr(m, "bn", None), getattr(m, "act", None))


def find_units(model: nn.Module) -> list[Unit]:
    """Every replaceable unit of ``model`` in module order (the model itself if it is one)."""
    if isinstance(model, _BLOCKS):
        return []
    if _conv_like(model):
        return [_conv_module_unit(model, "", None, "")]
    if _is_conv(model):
        return [Unit("", "bare-conv", model, None, "", model, None, None)]
    units: list[Unit] = []
    _walk(model, "", units)
    return units


def _square(value: Any, what: str) -> tuple[int | None, str | None]:
    """The single int of a square/symmetric conv attribute, or (None, reason)."""
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        return None, f"{what} {value} is not square/symmetric"
    return values[0], None


def geometry(conv: nn.Conv2d) -> tuple[dict[str, int] | None, str | None]:
    """``dict(c1, c2, k, s, p, g, d)`` of a conv, or None and why it has no single-int geometry."""
    padding = conv.padding
    if isinstance(padding, str):  # torch allows 'valid', and 'same' at stride 1
        pairs = list(zip(conv.kernel_size, conv.dilation, strict=True))
        if padding == "same" and any((k - 1) * d % 2 for k, d in pairs):
            return None, "padding='same' with an even effective kernel pads asymmetrically"
        padding = [0 if padding == "valid" else d * (k - 1) // 2 for k, d in pairs]
    geo = {"c1": conv.in_channels, "c2": conv.out_channels, "g": conv.groups}
    for key, value, what in (
        ("k", conv.kernel_size, "kernel"),
        ("s", conv.stride, "stride"),
        ("p", padding, "padding"),
        ("d", conv.dilation, "dilation"),
    ):
        geo[key], why = _square(value, what)
        if why:
            return None, why
    return geo, None


def unsupported(unit: Unit, to: str) -> str | None:
    """Why ``unit`` cannot be adopted exactly into family ``to``, or None if it can."""
    conv, bn = unit.conv, unit.bn
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is a Conv2d subclass (its forward may differ)"
    if not conv.weight.is_floating_point():
        return f"conv weight dtype {conv.weight.dtype} is not floating point"
    if not conv.weight.requires_grad:
        return "frozen conv (weight.requires_grad=False)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (blocks pad with zeros)"
    if bn is not None and (bn.running_mean is None or bn.running_var is None):
        return "BatchNorm without running statistics (eval mode normalises with batch statistics)"
    geo, why = geometry(conv)
    if geo is None:
        return why
    k, s, p, d = geo["k"], geo["s"], geo["p"], geo["d"]
    if to == "dynamic":
        return None
    if k % 2 == 0:
        return f"kernel {k} is even: {to}'s smaller branches need a centre tap"
    if to in ("dbb", "orepa") and d != 1:
        return f"dilation {d}: {to}'s branches are undilated"
    if p != d * (k // 2):
        return f"padding {p} != {d * (k // 2)} ('same' padding): {to}'s branches are centred in the kxk"
    if to == "qarepvgg" and k == 1 and geo["c1"] == geo["c2"] and s == 1:
        return (
            "QARepVGG with k=1, c1 == c2 and s=1 adds a parameter-free identity and has no 1x1 branch "
            "that could cancel it, so no exact start exists"
        )
    return None


def _default(unit: Unit) -> str | None:
    conv = unit.conv
    if tuple(conv.kernel_size) != (3, 3):
        return f"kernel {tuple(conv.kernel_size)} (default selects 3x3 only)"
    if conv.groups != 1:
        return f"groups={conv.groups} (default selects groups=1 only)"
    if tuple(conv.dilation) != (1, 1):
        return f"dilation {tuple(conv.dilation)} (default selects dilation 1 only)"
    return None


def _int_set(key: str, value: Any) -> set[int]:
    values = [value] if isinstance(value, int) else value
    if not isinstance(values, Iterable) or isinstance(values, str | bytes):
        raise ValueError(f"where[{key!r}] must be an int or a collection of ints, got {value!r}")
    values = list(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(
            f"where[{key!r}] must be a positive int or a non-empty collection of them, got {value!r}"
        )
    return set(values)


def _types(value: Any) -> tuple[type, ...]:
    values = (
        (value,) if isinstance(value, type) else tuple(value) if isinstance(value, Iterable) else (value,)
    )
    if not values or not all(isinstance(v, type) for v in values):
        raise ValueError(f"where['types'] must be a class or a collection of classes, got {value!r}")
    return values


def _patterns(value: Any) -> list[str | re.Pattern[str]]:
    values = (
        [value] if isinstance(value, str | re.Pattern) else list(value) if isinstance(value, Iterable) else []
    )
    if not values or not all(isinstance(v, str | re.Pattern) for v in values):
        raise ValueError(
            f"where['names'] must be a glob string, a compiled regex or a collection of them, got {value!r}"
        )
    return values


def _name_matches(name: str, patterns: list[str | re.Pattern[str]]) -> bool:
    return any(
        fnmatch.fnmatchcase(name, p) if isinstance(p, str) else p.fullmatch(name) is not None
        for p in patterns
    )


def _dict_selector(where: Mapping[str, Any]) -> Selector:
    bad = [k for k in where if k not in WHERE_KEYS]
    if bad:
        raise ValueError(f"where has unknown key(s) {bad}; allowed keys: {list(WHERE_KEYS)}")
    types = _types(where["types"]) if "types" in where else None
    names = _patterns(where["names"]) if "names" in where else None
    kernel = _int_set("kernel", where["kernel"]) if "kernel" in where else None
    stride = _int_set("stride", where["stride"]) if "stride" in where else None

    def select(unit: Unit) -> str | None:
        if types is not None and not isinstance(unit.module, types) and not isinstance(unit.conv, types):
            return f"type {type(unit.module).__name__} not in where['types']"
        if names is not None and not _name_matches(unit.name, names):
            return "name not matched by where['names']"
        if kernel is not None and not set(unit.conv.kernel_size) <= kernel:
            return f"kernel {tuple(unit.conv.kernel_size)} not in where['kernel']"
        if stride is not None and not set(unit.conv.stride) <= stride:
            return f"stride {tuple(unit.conv.stride)} not in where['stride']"
        return None

    return select


def compile_where(where: Any) -> Selector:
    """The unit selector for ``where``: None (default), a callable ``(name, module) -> bool`` or a dict."""
    if where is None:
        return _default
    if isinstance(where, Mapping):
        return _dict_selector(where)
    if callable(where):
        return lambda unit: None if where(unit.name, unit.module) else "where(name, module) returned False"
    raise ValueError(
        f"where must be None, a callable (name, module) -> bool or a dict with keys {list(WHERE_KEYS)}, "
        f"got {type(where).__name__}"
    )
