"""Whole-model conversion (``reparameterize``) and its proof (``verify``).

``reparameterize`` collapses every block that follows the conversion protocol (a ``reparameterize()``
method as in reparam, timm and MobileOne, or the older ``switch_to_deploy()``) and folds the remaining
Conv2d -> BatchNorm2d pairs.
``verify`` runs the training and deploy forms side by side in eval mode and reports the error end to
end and per converted block.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reparam.algebra import fold_bn

__all__ = [
    "BlockError",
    "VerifyReport",
    "default_rtol",
    "fold_conv_bn",
    "randomize_bn_",
    "reparameterize",
    "verify",
]

_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def default_rtol(dtype: torch.dtype) -> float:
    """Relative tolerance for an equivalence check in ``dtype`` (rounding, not conversion, dominates)."""
    return _RTOL.get(dtype, 1e-4)


_METHODS = ("reparameterize", "switch_to_deploy")


def _conversion(module: nn.Module) -> Callable[[], object] | None:
    """The module's in-place conversion method (``reparameterize`` or the older ``switch_to_deploy``)."""
    for name in _METHODS:
        method = getattr(module, name, None)
        if callable(method):
            return method
    return None


def _convertible(module: nn.Module) -> bool:
    return _conversion(module) is not None


def _fused_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    weight, bias = fold_bn(conv.weight, bn, conv.bias)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused


def _foldable(conv: Any, bn: Any) -> bool:
    return (
        type(conv) is nn.Conv2d
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.num_features == conv.out_channels
    )


@torch.no_grad()
def fold_conv_bn(model: nn.Module) -> int:
    """Fold Conv2d -> BatchNorm2d pairs in place; returns how many were folded.

    Known containers: ``nn.Sequential`` (adjacent children, the BN becomes ``nn.Identity``) and modules
    with ``conv``, ``bn`` and ``forward_fuse`` (the Ultralytics ``Conv`` convention: the BN is removed
    and ``forward`` switches to ``forward_fuse``).
    """
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                conv, bn = module._modules[a], module._modules[b]
                if _foldable(conv, bn):
                    module._modules[a] = _fused_conv(conv, bn)
                    module._modules[b] = nn.Identity()
                    folded += 1
        elif callable(getattr(module, "forward_fuse", None)) and _foldable(
            getattr(module, "conv", None), getattr(module, "bn", None)
        ):
            module.conv = _fused_conv(module.conv, module.bn)
            delattr(module, "bn")
            module.forward = module.forward_fuse
            folded += 1
    return folded


def _convert_tree(module: nn.Module) -> None:
    """Convert ``module`` first (it may read its children's branches), then whatever children remain."""
    method = _conversion(module)
    if method is not None:
        method()
    for child in list(module.children()):
        _convert_tree(child)


def reparameterize(model: nn.Module, inplace: bool = False, allow_train: bool = False) -> nn.Module:
    """Convert every re-parameterizable block of ``model`` and fold Conv2d -> BN pairs.

    Returns a converted deep copy (or ``model`` itself with ``inplace=True``). A model in training mode
    is refused unless ``allow_train=True``: its BN statistics are still moving, so the deploy form
    would freeze a state that the training model no longer has.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if model.training and not allow_train:
        raise ValueError(
            "model is in training mode: call model.eval() before converting "
            "(or pass allow_train=True to convert with the current running statistics)"
        )
    target = model if inplace else copy.deepcopy(model)
    _convert_tree(target)
    fold_conv_bn(target)
    return target


@torch.no_grad()
def randomize_bn_(model: nn.Module, seed: int = 0) -> int:
    """Give every BatchNorm random statistics and affine parameters, so equivalence checks are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features

            def rand(lo: float, hi: float, n: int = n, like: Tensor = m.running_mean) -> Tensor:
                return (torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo).to(like)

            m.running_mean.copy_(rand(-0.5, 0.5))
            m.running_var.copy_(rand(0.5, 2.0))
            if m.affine:
                m.weight.copy_(rand(0.5, 1.5))
                m.bias.copy_(rand(-0.5, 0.5))
            count += 1
    return count


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, Sequence) and not isinstance(out, str):
        return [t for item in out for t in _tensors(item)]
    return []


def _errors(ref: Any, got: Any) -> tuple[float, float]:
    a, b = _tensors(ref), _tensors(got)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return math.inf, math.inf
    if not a:
        return 0.0, 0.0
    pairs = zip(a, b, strict=True)
    max_abs = max(float((x.double() - y.double()).abs().max()) if x.numel() else 0.0 for x, y in pairs)
    scale = max(float(x.double().abs().max()) if x.numel() else 0.0 for x in a)
    return max_abs, max_abs / max(scale, torch.finfo(torch.float64).tiny)


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
    """Outcome of :func:`verify`: end-to-end error, per-block rows and, on failure, likely causes."""

    ok: bool
    max_abs: float
    max_rel: float
    rtol: float
    dtype: torch.dtype
    blocks: list[BlockError] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

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
        w = max(len(r[0]) for r in rows)
        k = max(len(r[1]) for r in rows)
        lines = [f"{'block':<{w}}  {'type':<{k}}  {'max_abs':>10}  {'max_rel':>10}  ok"]
        lines += [
            f"{n:<{w}}  {t:<{k}}  {a:>10.3e}  {r:>10.3e}  {'yes' if o else 'NO'}" for n, t, a, r, o in rows
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (
            f"verify: {'PASS' if self.ok else 'FAIL'} — {len(self.blocks)} blocks converted, "
            f"max_abs={self.max_abs:.3e}, max_rel={self.max_rel:.3e} (rtol {self.rtol:.0e}, {self.dtype})"
        )
        parts = [head, self.table(), *(f"hint: {h}" for h in self.hints)]
        return "\n".join(parts)


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


def _capture_block_inputs(model: nn.Module, inputs: Any) -> tuple[Any, dict[str, tuple]]:
    """Run ``model`` once, recording the positional inputs of every top-level convertible block."""
    seen: dict[str, tuple] = {}
    handles = []
    for name, module in _top_convertible(model):

        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            seen.setdefault(name, tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args))

        handles.append(module.register_forward_pre_hook(hook))
    try:
        out = _call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def _top_convertible(model: nn.Module, prefix: str = "") -> Iterable[tuple[str, nn.Module]]:
    if _convertible(model):
        yield prefix, model
        return
    for name, child in model.named_children():
        yield from _top_convertible(child, f"{prefix}.{name}" if prefix else name)


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
    equal. Relative error is ``max|deploy - train| / max|train|``.
    """
    if rtol is not None and not rtol > 0:
        raise ValueError(f"rtol must be a positive float, got {rtol!r}")
    if len(input_shape) < 1 or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"input_shape must be a sequence of positive sizes, got {tuple(input_shape)}")
    was_training = model.training
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

    ref, block_inputs = _capture_block_inputs(train_form, x)
    rows: list[BlockError] = []
    if per_block:
        for name, block in _top_convertible(train_form):
            if name not in block_inputs:
                continue
            args = block_inputs[name]
            before = block(*args)
            converted = reparameterize(block, allow_train=False)
            a, r = _errors(before, converted(*args))
            rows.append(BlockError(name, type(block).__name__, a, r, r <= tol))
    deploy = reparameterize(train_form)
    max_abs, max_rel = _errors(ref, _call(deploy, x))
    ok = max_rel <= tol and all(r.ok for r in rows)
    report = VerifyReport(ok, max_abs, max_rel, tol, work, rows)
    if not ok:
        report.hints = _hints(report, was_training, work)
    return report


def _hints(report: VerifyReport, was_training: bool, dtype: torch.dtype) -> list[str]:
    hints = []
    if dtype in (torch.float16, torch.bfloat16):
        hints.append(
            f"{dtype} rounding dominates the comparison: verify in float32 or float64 (dtype=torch.float64)"
        )
    if was_training:
        hints.append(
            "the model was in train mode: its BN statistics change with every batch; convert and "
            "compare only after model.eval() (verify compares eval forms, not train mode)"
        )
    bad = [r for r in report.blocks if not r.ok]
    if bad:
        worst = max(bad, key=lambda r: r.max_rel)
        hints.append(
            f"{len(bad)} block(s) do not convert exactly; worst: {worst.name} ({worst.kind}, "
            f"max_rel={worst.max_rel:.3e}): check its equivalent_kernel_bias()"
        )
    elif report.blocks:
        hints.append(
            "every block converts exactly on its own: the end-to-end gap comes from accumulation "
            "(compare in float64) or from modules outside the blocks that behave differently"
        )
    if not report.blocks:
        hints.append("no re-parameterizable block was found in the model")
    return hints
