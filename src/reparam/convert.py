"""Whole-model conversion (``reparameterize``); its proof ``verify`` lives in :mod:`reparam.verification`.

``reparameterize`` asks every module one protocol: a ``deployed`` property and an idempotent in-place
``reparameterize()``; a module answering it is converted iff it is not deployed yet. Foreign blocks
(timm's MobileOne/RepVGG ``reparameterize()`` or the older ``switch_to_deploy()``, without ``deployed``)
are converted by calling their method. Then the remaining Conv2d -> BatchNorm2d pairs are folded, but only
where the forward is known to be sequential (plain ``nn.Sequential``, the Ultralytics ``Conv`` convention).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reparam.algebra import fold_bn
from reparam.blocks.base import answers_protocol
from reparam.checks import strict_bools

# ``verify``, ``VerifyReport``, ``BlockError``, ``default_rtol`` and ``relative_error`` moved to
# reparam.verification and stay importable from here through ``__getattr__`` below.
__all__ = ["fold_conv_bn", "randomize_bn_", "reparameterize"]

_METHODS = ("reparameterize", "switch_to_deploy")
_VERIFICATION = ("BlockError", "VerifyReport", "default_rtol", "relative_error", "verify")
_MAX_NAMES = 8


def __getattr__(name: str) -> Any:
    """``verify`` and its report live in :mod:`reparam.verification`; they stay importable from here."""
    if name in _VERIFICATION:
        from reparam import verification

        return getattr(verification, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _conversion(module: nn.Module) -> Callable[[], object] | None:
    """The module's in-place conversion method (``reparameterize`` or the older ``switch_to_deploy``)."""
    for name in _METHODS:
        method = getattr(module, name, None)
        if callable(method):
            return method
    return None


def _is_deployed(module: nn.Module) -> bool:
    """True only for protocol modules that say so; a foreign block cannot tell, so it is converted again."""
    return answers_protocol(module) and bool(module.deployed)


def _top_blocks(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The top-most modules that have a conversion method, with their qualified names ('' for the root)."""
    if _conversion(model) is not None:
        yield prefix, model
        return
    for name, child in model.named_children():
        yield from _top_blocks(child, f"{prefix}.{name}" if prefix else name)


def _refuse_torchscript(model: nn.Module) -> None:
    """TypeError when ``model`` or a submodule is TorchScript (scripted or traced): its code is frozen."""
    for name, module in [("", model)] if isinstance(model, torch.jit.ScriptModule) else model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = f"model.{name}" if name else "model"
            raise TypeError(
                f"{where} is a TorchScript module ({type(module).__name__}): reparam converts the eager "
                "nn.Module; convert first, then script/trace the converted model"
            )


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


def _fold_scope(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` and its descendants, except inside protocol blocks not yet converted (their branches'
    BNs belong to their own ``reparameterize()``)."""
    yield module
    if answers_protocol(module) and not module.deployed:
        return
    for child in module.children():
        yield from _fold_scope(child)


@torch.no_grad()
def fold_conv_bn(model: nn.Module) -> int:
    """Fold Conv2d -> BatchNorm2d pairs in place where the forward is known to be sequential; count them.

    Known containers: an ``nn.Sequential`` whose class keeps ``nn.Sequential.forward`` (adjacent children;
    the BN becomes ``nn.Identity``) and modules with ``conv``, ``bn`` and ``forward_fuse`` (the Ultralytics
    ``Conv`` convention: the BN is removed and ``forward`` switches to ``forward_fuse``). A Sequential
    subclass with its own ``forward`` may use its children in any way, so it is left alone.
    """
    folded = 0
    for module in list(_fold_scope(model)):
        if isinstance(module, nn.Sequential):
            if type(module).forward is not nn.Sequential.forward:
                continue
            for a, b in itertools.pairwise(list(module._modules)):
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


def _convert_tree(module: nn.Module, name: str) -> None:
    """Convert ``module`` first (it may read its children's branches), then whatever children remain."""
    method = _conversion(module)
    if method is not None and not _is_deployed(module):
        method()
        if answers_protocol(module) and not module.deployed:
            raise RuntimeError(
                f"{name or '<model>'} ({type(module).__name__}).reparameterize() returned but the module "
                "still reports deployed=False: the block breaks the conversion protocol"
            )
    for child_name, child in list(module.named_children()):
        _convert_tree(child, f"{name}.{child_name}" if name else child_name)


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMES])
    return shown + (f" and {len(items) - _MAX_NAMES} more" if len(items) > _MAX_NAMES else "")


def _holds_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def _looks_reparameterizable(module: nn.Module) -> bool:
    """A user class (not from torch) without a conversion method holding two or more conv-bearing children:
    the shape of a multi-branch block that nobody taught to convert."""
    return (
        not type(module).__module__.startswith("torch.")
        and _conversion(module) is None
        and sum(_holds_conv(c) for c in module.children()) >= 2
    )


def _suspects(model: nn.Module) -> list[str]:
    """The innermost modules that look re-parameterizable but lack a conversion method, as 'name (Class)'."""
    found = {name: m for name, m in model.named_modules() if _looks_reparameterizable(m)}
    inner = [n for n in found if not any(o != n and (n == "" or o.startswith(f"{n}.")) for o in found)]
    return [f"{n or '<model>'} ({type(found[n]).__name__})" for n in inner]


@dataclass(frozen=True)
class _Conversion:
    """What one in-place conversion did: top-most blocks converted, blocks already deployed, Conv-BN folds."""

    converted: tuple[str, ...]
    already_deployed: tuple[str, ...]
    bn_folds: int
    suspects: tuple[str, ...]

    @property
    def nothing_converted(self) -> str | None:
        """Why nothing was converted (no block converted, no Conv-BN fold), or None if something was."""
        if self.converted or self.bn_folds:
            return None
        if self.already_deployed:
            return (
                "nothing was converted: every re-parameterizable block is already deployed "
                f"({_names(list(self.already_deployed))}) and no Conv->BN pair is left to fold"
            )
        why = "nothing was converted: the model has no re-parameterizable block and no Conv->BN pair"
        if self.suspects:
            why += (
                "; modules that look re-parameterizable (two or more conv branches) but lack "
                f"reparameterize(): {_names(list(self.suspects))}"
            )
        return why


def _convert(model: nn.Module) -> _Conversion:
    """Convert ``model`` in place (blocks, then Conv-BN folds) and say what was done."""
    tops = [(n or "<model>", _is_deployed(m)) for n, m in _top_blocks(model)]
    converted = tuple(n for n, deployed in tops if not deployed)
    _convert_tree(model, "")
    folds = fold_conv_bn(model)
    # Only asked when nothing changed, so the model is still the one the user gave.
    suspects = () if converted or folds else tuple(_suspects(model))
    return _Conversion(converted, tuple(n for n, deployed in tops if deployed), folds, suspects)


@strict_bools
def reparameterize(model: nn.Module, inplace: bool = False, allow_train: bool = False) -> nn.Module:
    """Convert every re-parameterizable block of ``model`` and fold Conv2d -> BN pairs.

    Returns a converted deep copy (or ``model`` itself with ``inplace=True``). A model in training mode
    is refused unless ``allow_train=True``: its BN statistics are still moving, so the deploy form
    would freeze a state that the training model no longer has. TorchScript models are refused.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _refuse_torchscript(model)
    if model.training and not allow_train:
        raise ValueError(
            "model is in training mode: call model.eval() before converting "
            "(or pass allow_train=True to convert with the current running statistics)"
        )
    target = model if inplace else copy.deepcopy(model)
    _convert(target)
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
