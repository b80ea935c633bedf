"""``load_weights``: load checkpoints of the official RepVGG / DBB / OREPA code, YOLOv6 and timm-CondConv
DynamicConv (and reparam's own) into reparam blocks of the same geometry, so they compute the same function.

Each reparam block of the model takes the source tensors under its own path prefix, translated from the
layout they were saved in (detected per block); everything outside blocks loads by name. RepVGG's official
code and YOLOv6 (RepVGGBlock, QARepVGGBlock) use reparam's own tensor names, so they load as 'reparam'.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reparam.blocks.base import ReparamBlock
from reparam.blocks.dbb import DBB
from reparam.blocks.dynamic import DynamicConv
from reparam.blocks.orepa import OREPA, OREPA_1x1, OREPA_LargeConv, OREPAKernel, OREPARepVGG
from reparam.blocks.repvgg import QARepVGGBlock, RepVGGBlock
from reparam.checks import strict_bools
from reparam.io import load_checkpoint
from reparam.text import text_table

__all__ = ["BlockLoad", "LoadReport", "load_weights"]

_SHOWN = 10
_NBT = "num_batches_tracked"
_DEPLOY = {  # official deploy conv name and the layout it is reported as
    RepVGGBlock: ("rbr_reparam", "repvgg-deploy"),
    QARepVGGBlock: ("rbr_reparam", "repvgg-deploy"),
    DBB: ("dbb_reparam", "dbb-deploy"),
    OREPA: ("orepa_reparam", "orepa-deploy"),
    OREPA_1x1: ("or1x1_reparam", "orepa-deploy"),
    OREPARepVGG: ("rbr_reparam", "orepa-deploy"),
    OREPA_LargeConv: ("or_large_reparam", "orepa-deploy"),
}
Mapped = dict[str, tuple[str, Tensor]]  # target key (relative) -> (source key (relative), tensor)


@dataclass(frozen=True)
class BlockLoad:
    """One block: its path, class, the layout its tensors were saved in, and how many were mapped."""

    name: str
    block: str
    layout: str
    tensors: int


@dataclass
class LoadReport:
    """Outcome of :func:`load_weights`: per-block layouts, tensors loaded by name, and what did not map."""

    blocks: list[BlockLoad]
    by_name: int  # tensors outside reparam blocks, loaded under their own names
    unexpected: list[str]  # source keys with no place in the model
    missing: list[str]  # model keys the source did not provide (left unchanged)
    ignored: list[str] = field(default_factory=list)  # source num_batches_tracked with no BN to go to

    @property
    def loaded(self) -> int:
        """Tensors copied into the model."""
        return self.by_name + sum(b.tensors for b in self.blocks)

    @property
    def ok(self) -> bool:
        """True when every source tensor mapped and every model tensor was provided."""
        return not self.unexpected and not self.missing

    def table(self) -> str:
        """The per-block layouts as a fixed-width text table."""
        rows = [
            {"block": b.name or "<model>", "class": b.block, "layout": b.layout, "tensors": b.tensors}
            for b in self.blocks
        ]
        return text_table(rows) if rows else "(no reparam blocks)"

    def __str__(self) -> str:
        lines = [
            f"loaded {self.loaded} tensors: {sum(b.tensors for b in self.blocks)} into {len(self.blocks)} "
            f"reparam block(s), {self.by_name} by name elsewhere",
            self.table(),
        ]
        if self.unexpected:
            lines.append(f"unmapped source tensors: {_listing(self.unexpected)}")
        if self.missing:
            lines.append(f"model tensors not provided (unchanged): {_listing(self.missing)}")
        if self.ignored:
            lines.append(f"ignored BN counters: {_listing(self.ignored)}")
        return "\n".join(lines)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown} and {len(keys) - _SHOWN} more ({len(keys)} in all)" if len(keys) > _SHOWN else shown


# ------------------------------------------------------------------------------------------------ reading
def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _state_dict(obj: Any) -> dict[str, Tensor]:
    """The tensor mapping in ``obj``: itself, or under 'state_dict' / 'model' (a mapping or a module)."""
    if _is_state(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_state(inner):
                return dict(inner)
        found = ", ".join(repr(k) for k in list(obj)[:_SHOWN])
        raise ValueError(
            "state_dict_or_path holds no state dict: expected a mapping of tensors, or a checkpoint with one "
            f"under 'state_dict' or 'model'; top-level keys: {found or '(none)'}"
        )
    raise ValueError(f"state_dict_or_path must be a mapping of tensors or a path, got {type(obj).__name__}")


def _strip_parallel(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the 'module.' prefix (Data/DistributedDataParallel) when every key has it."""
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read(source: Any, trust: bool) -> dict[str, Tensor]:
    if isinstance(source, str | os.PathLike):
        source = load_checkpoint(source, trust=trust)  # weights-only unless the caller trusts the file
    return _strip_parallel(_state_dict(source))


# ------------------------------------------------------------------------------------------------ layouts
def _direct(sub: dict[str, Tensor], renames: Callable[[str], str] = lambda k: k) -> tuple[Mapped, list[str]]:
    mapped: Mapped = {}
    for key, t in sub.items():
        mapped[renames(key)] = (key, t)
    return mapped, []


class _ShapeError(ValueError):
    """A source tensor whose shape does not fit (keys relative to the block; :func:`_map` adds its path)."""

    def __init__(self, source: str, got: tuple[int, ...], target: str, want: tuple[int, ...]) -> None:
        super().__init__(source, got, target, want)
        self.source, self.got, self.target, self.want = source, got, target, want

    def named(self, block: str) -> ValueError:
        return ValueError(
            f"state_dict_or_path: {_join(block, self.source)} has shape {self.got} but the model's "
            f"{_join(block, self.target)} needs {self.want} (different block geometry or tensor layout?)"
        )


@contextlib.contextmanager
def _within(source: str, target: str) -> Iterator[None]:
    """Shape errors of a sub-layout (a generator inside a block) with their keys made block-relative."""
    try:
        yield
    except _ShapeError as err:
        raise _ShapeError(_join(source, err.source), err.got, _join(target, err.target), err.want) from None


def _layout(source: str, t: Tensor, official: tuple[int, ...], target: str, own: tuple[int, ...]) -> Tensor:
    """A documented layout transform: ``t`` saved in the ``official`` shape, reshaped to the model's ``own``.

    Only that exact shape is transformed (never any tensor with the same element count); else a ValueError
    naming the key and both shapes.
    """
    if tuple(t.shape) != tuple(official):
        raise _ShapeError(source, tuple(t.shape), target, tuple(own))
    return t.reshape(own)


def _deploy(block: nn.Module, sub: dict[str, Tensor]) -> tuple[str, Mapped, list[str]] | None:
    """The official deploy layout (``<x>_reparam.weight/bias``) into a deployed block's ``conv``."""
    prefix, layout = _DEPLOY.get(type(block), ("", ""))
    if not prefix or not any(k.startswith(prefix + ".") for k in sub):
        return None
    mapped, _ = _direct(sub, lambda k: "conv" + k[len(prefix) :] if k.startswith(prefix + ".") else k)
    return layout, mapped, []


_DBB_RENAMES = {"dbb_avg.bn.bn.": "dbb_avg.bn.", "dbb_1x1_kxk.bn1.bn.": "dbb_1x1_kxk.bn1."}
_CONSTANT = "(constant)"  # source of a constant buffer the official files do not carry
_DBB_ID = "dbb_1x1_kxk.idconv1.id_tensor"


def _dbb(block: DBB, sub: dict[str, Tensor]) -> tuple[str, Mapped, list[str]]:
    """BN-and-pad wraps its BN (``.bn.bn.``); IdentityBasedConv1x1 keeps ``id_tensor`` as a plain attribute
    (not in its state dict), so the constant identity is filled in; a plain first 1x1 (``conv1``, when the
    internal width is not c1) becomes ``idconv1`` as ``weight - identity``."""
    official = any(k.startswith(tuple(_DBB_RENAMES)) or k.startswith("dbb_1x1_kxk.conv1.") for k in sub)

    def rename(key: str) -> str:
        for old, new in _DBB_RENAMES.items():
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    mapped, _ = _direct({k: v for k, v in sub.items() if k != "dbb_1x1_kxk.conv1.weight"}, rename)
    ident = block.dbb_1x1_kxk.idconv1.id_tensor
    if "dbb_1x1_kxk.conv1.weight" in sub:
        w = sub["dbb_1x1_kxk.conv1.weight"]
        if w.shape != ident.shape:
            raise _ShapeError(
                "dbb_1x1_kxk.conv1.weight", tuple(w.shape), "dbb_1x1_kxk.idconv1", tuple(ident.shape)
            )
        mapped["dbb_1x1_kxk.idconv1.weight"] = ("dbb_1x1_kxk.conv1.weight", w - ident.to(w))
    if _DBB_ID not in sub and "dbb_1x1_kxk.idconv1.weight" in mapped:
        mapped[_DBB_ID] = (_CONSTANT, ident)
    return ("dbb-official" if official else "reparam"), mapped, []


_OREPA_GEN = {  # official generator tensor (after the prefix) -> OREPAKernel attribute
    "origin": "weight_origin",
    "avg_conv": "weight_avg",
    "pfir_conv": "weight_prior",
    "1x1": "weight_1x1",
    "1x1_kxk_idconv1": "weight_1x1_kxk_idconv1",
    "1x1_kxk_conv2": "weight_1x1_kxk_conv2",
    "gconv_dw": "weight_dw",
}


def _orepa_pw(pw: Tensor, g: int) -> Tensor:
    """The reference builds its depthwise-separable kernel from ``pw.view(O/g, g, ...)``, so its kernel row
    ``c * O/g + a`` (group c) uses saved row ``a * g + c``; reorder the rows into reparam's grouped layout."""
    o = pw.shape[0]
    og = o // g
    rows = torch.arange(o)
    return pw[(rows % og) * g + rows // og]


def _orepa_gen(gen: OREPAKernel, sub: dict[str, Tensor], tag: str) -> tuple[Mapped, list[str]]:
    """One official OREPA generator (``weight_<tag>_*``, ``vector``, ``id_tensor``, the saved mean filter
    and frequency prior) into an :class:`OREPAKernel`; keys relative to both. The prior is written into
    ``fixed_filters`` as saved (the reference's is not wrapped, so loading must keep it to stay exact)."""
    c2, g, k = gen.c2, gen.g, gen.k
    mapped: Mapped = {}
    rest: list[str] = []
    prefix, prior, mean = f"weight_{tag}_", f"weight_{tag}_prior", f"weight_{tag}_avg_avg"
    for key, t in sub.items():
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if (
            name in _OREPA_GEN
            and hasattr(gen, _OREPA_GEN[name])
            and getattr(gen, _OREPA_GEN[name]) is not None
        ):
            mapped[_OREPA_GEN[name]] = (key, t)
        elif key == "vector":
            rows = gen.vector.shape[0]
            if tag == "rbr" and t.shape[0] == rows + 1:  # the RepVGG-style reference's unused last row
                t = t[:rows]
            mapped["vector"] = (key, t)
        elif key == "id_tensor":  # official (T, I/g, 1, 1), reparam (T, I/g)
            ident = gen.id_tensor
            mapped["id_tensor"] = (key, _layout(key, t, (*ident.shape, 1, 1), "id_tensor", ident.shape))
        elif name == "gconv_pw":
            mapped["weight_pw"] = (key, _orepa_pw(t, g) if t.shape == gen.weight_pw.shape else t)
        elif name == "1x1_kxk_conv1":  # the plain first 1x1 (no identity buffer)
            own1 = gen.weight_1x1_kxk_idconv1
            if t.shape != own1.shape:
                raise _ShapeError(key, tuple(t.shape), "weight_1x1_kxk_idconv1", tuple(own1.shape))
            mapped["weight_1x1_kxk_idconv1"] = (key, t - gen.id_tensor.to(t).view(own1.shape))
            mapped["id_tensor"] = (_CONSTANT, gen.id_tensor)
        elif key not in (prior, mean):
            rest.append(key)
    if prior in sub:
        filters = gen.fixed_filters.detach().clone()
        view = filters.view(filters.shape[0], c2, k, k)
        view[1] = _layout(prior, sub[prior], (c2, k, k), "fixed_filters", (c2, k, k))
        if mean in sub:
            view[0] = _layout(mean, sub[mean], (k, k), "fixed_filters", (k, k))
        mapped["fixed_filters"] = (prior, filters)
    elif mean in sub:
        rest.append(mean)
    return mapped, rest


def _under(mapped: Mapped, target: str, source: str) -> Mapped:
    return {_join(target, k): (_join(source, s) if s != _CONSTANT else s, t) for k, (s, t) in mapped.items()}


def _orepa(block: OREPA, sub: dict[str, Tensor]) -> tuple[str, Mapped, list[str]]:
    """OREPA (JUGGHM/OREPA_CVPR2022 ``OREPA``): the generator tensors into ``gen``, its BN as ``bn``."""
    bn = {k: t for k, t in sub.items() if k.startswith("bn.")}
    with _within("", "gen"):
        mapped, rest = _orepa_gen(block.gen, {k: t for k, t in sub.items() if k not in bn}, "orepa")
    return "orepa-official", _under(mapped, "gen", "") | {k: (k, t) for k, t in bn.items()}, rest


_FLIPPED = ("weight_origin", "weight_1x1_kxk_conv2", "weight_dw")  # a stage's spatial tensors


def _flip(key: str, t: Tensor, gen: OREPAKernel) -> Tensor:
    """``t`` mirrored in both spatial axes (fixed filters kept in their ``(rows, c2, k*k, 1)`` layout)."""
    if key == "fixed_filters":
        return t.view(t.shape[0], gen.c2, gen.k, gen.k).flip(-2, -1).reshape(t.shape)
    return t.flip(-2, -1) if key in _FLIPPED else t


def _orepa_large(block: OREPA_LargeConv, sub: dict[str, Tensor]) -> tuple[str, Mapped, list[str]]:
    """Official ``OREPA_LargeConv``: stage ``weight<i>`` (a weight-only OREPA) into ``stages.<i>``, ``bn`` by
    name. The reference composes stages by cross-correlating the running kernel with the next stage's
    (``conv2d(W.T, W_next, padding=2)``), the stacked-conv kernel of the next stage mirrored; reparam
    composes exact stacked convs, so every stage after the first is loaded mirrored (the same function)."""
    mapped: Mapped = {k: (k, t) for k, t in sub.items() if k.startswith("bn.")}
    known = tuple(f"weight{i}." for i in range(len(block.stages)))
    rest = [k for k in sub if not k.startswith(("bn.", *known))]
    for i, stage in enumerate(block.stages):
        prefix = known[i]
        with _within(f"weight{i}", f"stages.{i}"):
            stage_sub = {k[len(prefix) :]: t for k, t in sub.items() if k.startswith(prefix)}
            got, left = _orepa_gen(stage, stage_sub, "orepa")
        got = {k: (s, _flip(k, t, stage) if i else t) for k, (s, t) in got.items()}
        mapped |= _under(got, f"stages.{i}", f"weight{i}")
        rest += [prefix + k for k in left]
    return "orepa-official", mapped, rest


def _orepa_repvgg(block: OREPARepVGG, sub: dict[str, Tensor]) -> tuple[str, Mapped, list[str]]:
    """``RepVGGBlock_OREPA`` (blocks_repvgg.py): ``rbr_dense`` (an ``OREPA_3x3_RepVGG``: ``weight_rbr_*``
    and its BN) into ``gen`` and ``bn``; ``rbr_1x1`` and ``rbr_identity`` by name."""
    dense = {k[len("rbr_dense.") :]: t for k, t in sub.items() if k.startswith("rbr_dense.")}
    bn = {k: t for k, t in dense.items() if k.startswith("bn.")}
    with _within("rbr_dense", "gen"):
        mapped, rest = _orepa_gen(block.gen, {k: t for k, t in dense.items() if k not in bn}, "rbr")
    mapped = _under(mapped, "gen", "rbr_dense") | {k: ("rbr_dense." + k, t) for k, t in bn.items()}
    mapped |= {k: (k, t) for k, t in sub.items() if not k.startswith("rbr_dense.")}
    return "orepa-repvgg-official", mapped, ["rbr_dense." + k for k in rest]


def _orepa_1x1(block: OREPA_1x1, sub: dict[str, Tensor]) -> tuple[str, Mapped, list[str]]:
    """Official ``OREPA_1x1``: ``weight_or1x1_<x>`` -> ``weight_<x>`` (the same product of 1x1 factors)."""
    mapped = {
        ("weight_" + k[len("weight_or1x1_") :] if k.startswith("weight_or1x1_") else k): (k, t)
        for k, t in sub.items()
    }
    return "orepa-official", mapped, []


_CONDCONV = {
    "routing.weight": "routing_weight",
    "routing.bias": "routing_bias",
    "cond_conv.weight": "weight",
    "cond_conv.bias": "bias",
}


def _dynamic(block: DynamicConv, sub: dict[str, Tensor]) -> tuple[str, Mapped, list[str]]:
    """timm CondConv2d + routing Linear: ``cond_conv.weight (E, c2*c1/g*k*k)`` -> ``weight (E, c2, P)``."""
    own = block.state_dict()
    mapped: Mapped = {}
    rest: list[str] = []
    for key, t in sub.items():
        target = _CONDCONV.get(key)
        if target is None:
            rest.append(key)
        elif target == "weight":  # (E, c2 * c1/g * k * k) -> (E, c2, c1/g * k * k)
            e, c2, per = own["weight"].shape
            mapped[target] = (key, _layout(key, t, (e, c2 * per), target, (e, c2, per)))
        elif target == "bias" and target in own:  # (E, c2) -> (E, c2, 1)
            mapped[target] = (key, _layout(key, t, own["bias"].shape[:2], target, own["bias"].shape))
        else:
            mapped[target] = (key, t)
    return "timm-condconv", mapped, rest


_OFFICIAL: list[tuple[type, str, Callable[[Any, dict[str, Tensor]], tuple[str, Mapped, list[str]]]]] = [
    (OREPA, "weight_orepa_", _orepa),  # (block class, marker of the official layout, translation)
    (OREPARepVGG, "rbr_dense.weight_rbr_", _orepa_repvgg),
    (OREPA_1x1, "weight_or1x1_", _orepa_1x1),
    (OREPA_LargeConv, "weight0.", _orepa_large),
]


def _translate(block: nn.Module, sub: dict[str, Tensor]) -> tuple[str, Mapped, list[str]]:
    """(layout, mapped tensors, unmappable source keys) for one block's source tensors (relative keys)."""
    if isinstance(block, ReparamBlock) and block.deployed:
        deploy = _deploy(block, sub)
        if deploy is not None:
            return deploy
    if isinstance(block, ReparamBlock) and not block.deployed:
        for cls, marker, translate in _OFFICIAL:
            if isinstance(block, cls) and any(k.startswith(marker) for k in sub):
                return translate(block, sub)
    if isinstance(block, DBB) and not block.deployed:
        return _dbb(block, sub)
    if isinstance(block, DynamicConv) and any(k in sub for k in ("routing.weight", "cond_conv.weight")):
        return _dynamic(block, sub)
    mapped, _ = _direct(sub)
    return "reparam", mapped, []


# ------------------------------------------------------------------------------------------------ loading
_LAYOUT_BLOCKS = (
    RepVGGBlock,
    QARepVGGBlock,
    DBB,
    OREPA,
    OREPA_1x1,
    OREPA_LargeConv,
    OREPARepVGG,
    DynamicConv,
)


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks whose tensors may come in a foreign layout, deepest paths first."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYOUT_BLOCKS)]
    return sorted(found, key=lambda item: -item[0].count(".") - bool(item[0]))


def _take(state: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """Remove and return the tensors under ``name`` (all of them for the root), keys made relative."""
    if not name:
        sub = dict(state)
        state.clear()
        return sub
    prefix = name + "."
    keys = [k for k in state if k.startswith(prefix)]
    return {k[len(prefix) :]: state.pop(k) for k in keys}


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _map(model: nn.Module, state: dict[str, Tensor]) -> tuple[Mapped, list[BlockLoad], list[str], list[str]]:
    """Target key -> (source key, tensor); block rows; unmappable source keys; keys outside blocks."""
    state = dict(state)
    mapped: Mapped = {}
    rows: list[BlockLoad] = []
    unmapped: list[str] = []
    for name, block in _blocks(model):
        sub = _take(state, name)
        if not sub:
            continue
        try:
            layout, got, rest = _translate(block, sub)
        except _ShapeError as err:
            raise err.named(name) from None
        for target, (source, t) in got.items():
            mapped[_join(name, target)] = (_join(name, source), t)
        unmapped += [_join(name, k) for k in rest]
        rows.append(BlockLoad(name, type(block).__name__, layout, len(got)))
    for key, t in state.items():
        mapped[key] = (key, t)
    return mapped, sorted(rows, key=lambda r: r.name), unmapped, list(state)


def _check_shapes(mapped: Mapped, own: dict[str, Tensor]) -> None:
    """Only exact shapes load (layout transforms reshape before this): never by element count alone."""
    bad = [
        f"{source} {tuple(t.shape)} -> {key} {tuple(own[key].shape)}"
        for key, (source, t) in mapped.items()
        if key in own and t.shape != own[key].shape
    ]
    if bad:
        raise ValueError(
            f"state_dict_or_path: {len(bad)} tensor(s) do not fit the model's shapes "
            f"(different block geometry or tensor layout?): {_listing(bad)}"
        )


_UNMAPPED_HINTS = [
    (
        re.compile(r"_reparam\."),
        "deploy-form tensors (*_reparam.*) load into deployed blocks: convert the model first",
    ),
    (
        re.compile(r"(^|\.)se\.(down|up)\."),
        "RepVGG's SE tensors (se.down/se.up) have no place: reparam's RepVGGBlock has no SE",
    ),
]


@strict_bools
@torch.no_grad()
def load_weights(
    model: nn.Module, state_dict_or_path: Any, strict: bool = True, *, trust: bool = False
) -> LoadReport:
    """Load a state dict (or a checkpoint path, read weights-only) into ``model``, translating layouts.

    Layouts recognised per block: reparam's own; official RepVGG and YOLOv6 RepVGGBlock/QARepVGGBlock
    (same names as reparam); their deploy form ``rbr_reparam`` (into a deployed block); DBB official
    (``dbb_*``, BN-and-pad ``.bn.bn.``, ``dbb_reparam``); OREPA official (``weight_orepa_*``, ``vector``,
    the saved prior buffer, ``orepa_reparam``); timm CondConv2d DynamicConv (``routing``, ``cond_conv``).
    Wrappers ``{'state_dict': ...}`` / ``{'model': ...}`` and 'module.' prefixes are removed. ``strict``:
    ValueError naming unmapped source tensors and model tensors not provided; shapes must always fit.
    A path is read weights-only against torch's allow-list; ``trust=True`` unpickles a file you trust.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    mapped, rows, unmapped, outside = _map(model, _read(state_dict_or_path, trust))
    own = model.state_dict(keep_vars=True)
    ignored = sorted(s for k, (s, _) in mapped.items() if k not in own and k.endswith(_NBT))
    unexpected = unmapped + sorted(s for k, (s, _) in mapped.items() if k not in own and not k.endswith(_NBT))
    missing = sorted(k for k in own if k not in mapped and not k.endswith(_NBT))
    if strict and (unexpected or missing):
        parts = [f"unmapped source tensors: {_listing(unexpected)}"] if unexpected else []
        parts += [f"model tensors not provided: {_listing(missing)}"] if missing else []
        parts += [hint for pattern, hint in _UNMAPPED_HINTS if any(pattern.search(k) for k in unexpected)]
        raise ValueError("load_weights(strict=True): " + "; ".join(parts))
    _check_shapes(mapped, own)
    for key, (_, t) in mapped.items():
        if key in own:
            own[key].copy_(t)
    return LoadReport(rows, sum(k in own for k in outside), unexpected, missing, ignored)
