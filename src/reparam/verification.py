"""The proof of a conversion: ``verify`` runs the training and deploy forms side by side in eval mode.

It reports the error end to end (each output tensor and each of its channels against its own scale, so a
small output beside a large one cannot hide) and per converted block, and fails, saying why, on a NaN/Inf
in any output, on a block that does not convert exactly, on a hook the conversion would drop, and on a
model where nothing was converted at all.
``relative_error`` is the one comparison of nested outputs used here and by the export checks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reparam.blocks.base import ReparamContainer, outermost_modules
from reparam.checks import strict_bools
from reparam.convert import (
    Conversion,
    check_model,
    conversion_method,
    convert_in_place,
    is_deployed,
    randomize_bn_,
    training_modules,
)
from reparam.text import text_table

__all__ = ["BlockError", "VerifyReport", "default_rtol", "relative_error", "verify"]

_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
_MAX_HINTS = 5
_ROUNDING = 16  # a channel's scale is at least _ROUNDING * eps / rtol of its tensor's scale


def default_rtol(dtype: torch.dtype) -> float:
    """Relative tolerance for an equivalence check in ``dtype`` (rounding, not conversion, dominates)."""
    return _RTOL.get(dtype, 1e-4)


def _is_sequence(obj: Any) -> bool:
    return isinstance(obj, Sequence) and not isinstance(obj, str | bytes)


def _pair(a: Any, b: Any, out: list[tuple[Tensor, Tensor]]) -> bool:
    """Collect the tensor pairs of two nested outputs into ``out``; False when their structures differ."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        ok = isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
        if ok:
            out.append((a, b))
        return ok
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(_pair(a[k], b[k], out) for k in a)
        )
    if _is_sequence(a) or _is_sequence(b):
        return (
            _is_sequence(a)
            and _is_sequence(b)
            and len(a) == len(b)
            and all(_pair(x, y, out) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, int | float) and isinstance(b, int | float):
        out.append((torch.tensor(float(a)), torch.tensor(float(b))))
        return True
    return type(a) is type(b) and a == b


def relative_error(reference: Any, other: Any, *, floor: float = 0.0) -> tuple[float, float]:
    """``(max_abs, max_rel)`` of ``other`` against ``reference``: max|other - ref| and that over max|ref|.

    Both may be tensors or nested lists/tuples/dicts of them (numbers compare as scalars, other leaves must
    be equal). Returns ``(inf, inf)`` when the structures or shapes differ or when a NaN or Inf appears
    anywhere in either, so that a broken output can never pass a tolerance; ``max_rel`` is inf when the
    reference is all zeros and ``other`` is not. ``floor`` is the smallest scale the difference is divided
    by (for a slice that is ~0 everywhere, e.g. a channel, measured against its tensor's rounding).
    """
    pairs: list[tuple[Tensor, Tensor]] = []
    if not _pair(reference, other, pairs):
        return math.inf, math.inf
    max_abs = scale = 0.0
    for ref, got in pairs:
        ref, got = ref.detach().double(), got.detach().double()
        if not (bool(torch.isfinite(ref).all()) and bool(torch.isfinite(got).all())):
            return math.inf, math.inf
        if ref.numel():
            max_abs = max(max_abs, float((got - ref).abs().max()))
            scale = max(scale, float(ref.abs().max()))
    scale = max(scale, floor)
    if scale == 0.0:  # an all-zero reference: any difference is infinitely relative
        return max_abs, 0.0 if max_abs == 0.0 else math.inf
    return max_abs, max_abs / scale


def _named_tensors(out: Any, path: str = "output") -> Iterator[tuple[str, Tensor]]:
    """``(path, tensor)`` for each tensor of a nested output: ``output``, ``output[1][2]``, ``output['k']``"""
    if isinstance(out, Tensor):
        yield path, out.detach()
    elif isinstance(out, Mapping):
        for k, v in out.items():
            yield from _named_tensors(v, f"{path}[{k!r}]")
    elif _is_sequence(out):
        for i, v in enumerate(out):
            yield from _named_tensors(v, f"{path}[{i}]")


def _nonfinite(out: Any) -> Iterator[tuple[str, str]]:
    """``(path, 'NaN' | 'Inf' | 'NaN and Inf')`` for every tensor of a nested output that is not finite."""
    for path, t in _named_tensors(out):
        if t.is_floating_point() or t.is_complex():
            kinds = [k for k, bad in (("NaN", t.isnan()), ("Inf", t.isinf())) if bool(bad.any())]
            if kinds:
                yield path, " and ".join(kinds)


@dataclass(frozen=True)
class _Site:
    """Where an output differs most: the output/channel, its max_abs, and that over its own scale."""

    where: str
    max_abs: float
    max_rel: float
    scale: float


def _worst_site(ref: Any, got: Any, tol: float, dtype: torch.dtype) -> _Site:
    """The output tensor and channel (dim 1) with the largest :func:`relative_error` against its own scale.

    A channel's scale is floored at ``_ROUNDING * eps / tol`` of its tensor's max|ref|, so a channel that
    is ~0 everywhere is compared with the rounding of its tensor, not with zero. Structures must match.
    """
    worst = _Site("", 0.0, 0.0, 0.0)
    factor = min(1.0, _ROUNDING * torch.finfo(dtype).eps / tol)
    for (path, r), (_, g) in zip(_named_tensors(ref), _named_tensors(got), strict=True):
        if not r.numel():
            continue
        floor = factor * float(r.abs().max()) if r.is_floating_point() else 0.0
        parts = [(f"{path} channel {c}", r[:, c], g[:, c]) for c in range(r.shape[1])] if r.dim() > 1 else []
        for where, rc, gc in parts or [(path, r, g)]:
            a, rel = relative_error(rc, gc, floor=floor)
            if rel > worst.max_rel or not worst.where:
                worst = _Site(where, a, rel, max(float(rc.abs().max()) if rc.numel() else 0.0, floor))
    return worst


@dataclass
class BlockError:
    """Equivalence of one converted block, measured on the input it saw inside the model."""

    name: str
    kind: str
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: end-to-end error, per-block rows, what was converted, and why it failed."""

    ok: bool
    max_abs: float
    max_rel: float
    rtol: float
    dtype: torch.dtype
    blocks: list[BlockError] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    blocks_converted: int = 0
    bn_folds: int = 0
    worst: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def worst_block(self) -> BlockError | None:
        """The block with the largest relative error, if any block was converted."""
        return max(self.blocks, key=lambda r: r.max_rel, default=None)

    def table(self) -> str:
        """The report as a fixed-width text table, end-to-end row last."""
        rows = [(r.name or "<model>", r.kind, r.max_abs, r.max_rel, r.ok) for r in self.blocks]
        rows.append(
            ("END-TO-END", str(self.dtype).replace("torch.", ""), self.max_abs, self.max_rel, self.ok)
        )
        cells = [
            {"block": n, "type": t, "max_abs": f"{a:.3e}", "max_rel": f"{r:.3e}", "ok": "yes" if o else "NO"}
            for n, t, a, r, o in rows
        ]
        return text_table(cells)

    def __str__(self) -> str:
        head = (
            f"verify: {'PASS' if self.ok else 'FAIL'} — {self.blocks_converted} blocks converted, "
            f"{self.bn_folds} BN folds, max_abs={self.max_abs:.3e}, max_rel={self.max_rel:.3e}"
            f"{f' at {self.worst}' if self.worst else ''} (rtol {self.rtol:.0e}, {self.dtype})"
        )
        lines = [head, self.table(), *(f"hint: {h}" for h in self.hints), *(f"note: {n}" for n in self.notes)]
        return "\n".join(lines)


def _make_inputs(model: nn.Module, inputs: Any, input_shape: Sequence[int], seed: int) -> Any:
    if inputs is not None:
        return inputs
    ref = next(model.parameters(), None)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*input_shape, generator=gen, dtype=torch.float64)
    return x.to(device=ref.device if ref is not None else "cpu", dtype=ref.dtype if ref is not None else None)


def _cast(obj: Any, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple | list):
        return type(obj)(_cast(o, dtype) for o in obj)
    return obj


def _call(model: nn.Module, inputs: Any) -> Any:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def _pending_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks that conversion will change, one per row: containers (RepBlock, BepC3, a backbone) are
    opened so that each block inside gets its own row; already deployed blocks are left out."""
    blocks = outermost_modules(
        model, lambda m: conversion_method(m) is not None and not isinstance(m, ReparamContainer)
    )
    return [(name, m) for name, m in blocks if not is_deployed(m)]


def _capture_block_inputs(model: nn.Module, inputs: Any) -> tuple[Any, dict[str, tuple]]:
    """Run ``model`` once, recording the positional inputs of every top-level block still to convert."""
    seen: dict[str, tuple] = {}
    handles = []
    for name, module in _pending_blocks(model):

        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            seen.setdefault(name, tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args))

        handles.append(module.register_forward_pre_hook(hook))
    try:
        out = _call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def _first_run(model: nn.Module, x: Any, input_shape: Sequence[int] | None) -> tuple[Any, dict[str, tuple]]:
    """:func:`_capture_block_inputs`; a forward that fails on the generated input names ``input_shape``."""
    try:
        return _capture_block_inputs(model, x)
    except RuntimeError as e:
        if input_shape is None:
            raise
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise ValueError(
            f"input_shape={tuple(input_shape)} does not fit the model (pass its input shape, or inputs=): "
            f"{lines[0]}"
        ) from e


def _deploy_copy(block: nn.Module) -> nn.Module:
    deploy = copy.deepcopy(block)
    convert_in_place(deploy, refuse_hooks=False)
    return deploy


def _holds_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def _suspects(model: nn.Module, inputs: Any) -> list[str]:
    """The innermost user modules (not from torch, no conversion method) in which two conv-bearing children
    read the same input and give the module's own output shape: parallel branches summed, the shape of a
    re-param block nobody taught to convert. A chain (Bottleneck, SPPF), branches that are concatenated
    (C3) or a head of differently shaped outputs is not."""
    branches: dict[str, dict[int, list[tuple]]] = {}
    own: dict[str, tuple] = {}
    handles = []

    def shape_of(out: Any) -> tuple | None:
        return tuple(out.shape) if isinstance(out, Tensor) else None

    for name, m in model.named_modules():
        kids = [c for c in m.children() if _holds_conv(c)]
        if type(m).__module__.startswith("torch.") or conversion_method(m) is not None or len(kids) < 2:
            continue

        def outer(_m: nn.Module, _args: tuple, out: Any, name: str = name) -> None:
            own.setdefault(name, shape_of(out))

        def branch(_m: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            if args and isinstance(args[0], Tensor):
                branches.setdefault(name, {}).setdefault(id(args[0]), []).append(shape_of(out))

        handles += [m.register_forward_hook(outer), *(kid.register_forward_hook(branch) for kid in kids)]
    try:
        _call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    found = [
        n
        for n, by_input in branches.items()
        if own.get(n) is not None and any(shapes.count(own[n]) >= 2 for shapes in by_input.values())
    ]
    inner = [n for n in found if not any(o != n and (n == "" or o.startswith(f"{n}.")) for o in found)]
    modules = dict(model.named_modules())
    return [f"{n or '<model>'} ({type(modules[n]).__name__})" for n in inner]


def _block_rows(model: nn.Module, block_inputs: dict[str, tuple], tol: float) -> list[BlockError]:
    """Each block converted on its own, compared on the input it saw inside the model."""
    rows = []
    for name, block in _pending_blocks(model):
        if name in block_inputs:
            args = block_inputs[name]
            a, r = relative_error(block(*args), _deploy_copy(block)(*args))
            rows.append(BlockError(name, type(block).__name__, a, r, r <= tol))
    return rows


def _check_arguments(rtol: Any, input_shape: Any, dtype: Any) -> None:
    """ValueError naming the first of verify's ``rtol``, ``input_shape``, ``dtype`` that breaks its rule."""
    if rtol is not None and (
        isinstance(rtol, bool) or not isinstance(rtol, int | float) or not 0 < rtol < math.inf
    ):
        raise ValueError(f"rtol must be a positive float (finite), got {type(rtol).__name__} {rtol!r}")
    if (
        isinstance(input_shape, str)
        or not isinstance(input_shape, Sequence)
        or len(input_shape) < 1
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in input_shape)
    ):
        raise ValueError(f"input_shape must be a sequence of positive sizes (ints), got {input_shape!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (e.g. torch.float64), got {dtype!r}")


@strict_bools
@torch.no_grad()
def verify(
    model: nn.Module,
    inputs: Tensor | tuple | None = None,
    *,
    input_shape: Sequence[int] = (1, 3, 64, 64),
    dtype: torch.dtype | None = None,
    randomize_bn: bool = False,
    rtol: float | None = None,
    per_block: bool = True,
    seed: int = 0,
) -> VerifyReport:
    """Prove that converting ``model`` keeps its function: train form vs deploy form, both in eval().

    Works on copies; ``model`` is untouched. ``dtype`` casts model and inputs (float64 for a strict
    check); ``randomize_bn`` gives BNs random statistics first so that fresh models are not trivially
    equal. The end-to-end error is measured per output tensor and per channel (dim 1), each against its
    own scale (:func:`relative_error`), and the worst is named. Fails on any NaN/Inf, naming the output
    and form; on hooks the conversion would drop; and when nothing was converted, naming the innermost
    user modules with two or more conv+BN branches and no conversion method, the usual sign of a
    multi-branch block without ``reparameterize()``. Refuses TorchScript, meta tensors, nn.ModuleList.
    """
    check_model(model)
    if isinstance(model, nn.ModuleList | nn.ModuleDict):
        raise ValueError(
            f"model is an nn.{type(model).__name__}, which has no forward: pass the module that calls it "
            "(e.g. the whole model), or verify each entry, verify(model[i])"
        )
    _check_arguments(rtol, input_shape, dtype)
    training = training_modules(model)
    train_form = copy.deepcopy(model)
    if dtype is not None:
        train_form = train_form.to(dtype)
    train_form.eval()
    if randomize_bn:
        randomize_bn_(train_form, seed)
    x = _cast(_make_inputs(train_form, inputs, input_shape, seed), dtype)
    ref_param = next(train_form.parameters(), None)
    work = dtype or (ref_param.dtype if ref_param is not None else torch.float32)
    tol = default_rtol(work) if rtol is None else rtol

    ref, block_inputs = _first_run(train_form, x, None if inputs is not None else input_shape)
    rows = _block_rows(train_form, block_inputs, tol) if per_block else []
    deploy = copy.deepcopy(train_form)
    done = convert_in_place(deploy, refuse_hooks=False)
    if not (done.converted or done.bn_folds or done.already_deployed):
        done = dataclasses.replace(done, suspects=tuple(_suspects(train_form, x)))
    got = _call(deploy, x)
    max_abs, max_rel = relative_error(ref, got)
    site = _worst_site(ref, got, tol, work) if math.isfinite(max_rel) else None
    if site is not None:
        max_rel = max(max_rel, site.max_rel)
    ok = (
        max_rel <= tol
        and all(r.ok for r in rows)
        and done.nothing_converted is None
        and not done.dropped_hooks
    )
    report = VerifyReport(ok, max_abs, max_rel, tol, work, rows, [], len(done.converted), done.bn_folds)
    report.worst = site.where if site else ""
    report.notes = [n for n in (done.left_alone_note,) if n]
    if not ok:
        report.hints = _hints(report, training, done, site, _nonfinite_hints(ref, got))
    return report


def _nonfinite_hints(ref: Any, got: Any) -> list[str]:
    """One line per output path holding NaN/Inf, naming the form(s) it appears in, then the likely cause."""
    forms = {
        "the training form (reference)": dict(_nonfinite(ref)),
        "the deploy form (converted)": dict(_nonfinite(got)),
    }
    paths = list(dict.fromkeys(p for bad in forms.values() for p in bad))
    lines = [
        f"{p} holds " + " and ".join(f"{bad[p]} in {form}" for form, bad in forms.items() if p in bad)
        for p in paths[:_MAX_HINTS]
    ]
    if len(paths) > _MAX_HINTS:
        lines.append(f"... and {len(paths) - _MAX_HINTS} more outputs with NaN/Inf")
    ref_bad, got_bad = forms.values()
    if ref_bad:
        lines.append("the training form itself is not finite: fix the model, its weights or the inputs first")
    elif got_bad:
        lines.append("the training form is finite: the conversion produced the NaN/Inf")
    return lines


def _hints(
    report: VerifyReport, training: list[str], done: Conversion, site: _Site | None, nonfinite: list[str]
) -> list[str]:
    """Likely causes of a failed report, most decisive first."""
    nothing = done.nothing_converted
    hints = ([nothing] if nothing else []) + nonfinite
    if done.dropped_hooks:
        hints.append(
            f"conversion drops hooks on modules it removes or replaces: {', '.join(done.dropped_hooks)} "
            "(reparameterize refuses this model; remove the hooks or put them on the enclosing block)"
        )
    if report.dtype in (torch.float16, torch.bfloat16) and not hints:
        hints.append(
            f"{report.dtype} rounding dominates the comparison: verify in float32 or float64 "
            "(dtype=torch.float64)"
        )
    if site is not None and site.max_rel > report.rtol:
        hints.append(
            f"{site.where} differs most: max_abs={site.max_abs:.3e} against its own scale {site.scale:.3e} "
            f"(max_rel={site.max_rel:.3e}); each output and channel is measured against its own scale"
        )
    if training:
        where = "the model was" if training[0] == "<model>" else f"{', '.join(training[:3])} were"
        hints.append(
            f"{where} in train mode: its BN statistics change with every batch; convert and compare "
            "only after model.eval() (verify compares eval forms, not train mode)"
        )
    bad = [r for r in report.blocks if not r.ok]
    if bad:
        worst = max(bad, key=lambda r: r.max_rel)
        hints.append(
            f"{len(bad)} block(s) do not convert exactly; worst: {worst.name} ({worst.kind}, "
            f"max_rel={worst.max_rel:.3e}): check its equivalent_kernel_bias()"
        )
    elif report.blocks and not nonfinite:
        hints.append(
            "every block converts exactly on its own: the end-to-end gap comes from accumulation "
            "(compare in float64) or from modules outside the blocks that behave differently"
        )
    return hints
