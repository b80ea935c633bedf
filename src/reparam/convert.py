"""Whole-model conversion (``reparameterize``); its proof ``verify`` lives in :mod:`reparam.verification`.

``reparameterize`` asks every module one protocol: a ``deployed`` property and an idempotent in-place
``reparameterize()``; a module answering it is converted iff it is not deployed yet. Foreign blocks
(timm's MobileOne/RepVGG ``reparameterize()`` or the older ``switch_to_deploy()``, without ``deployed``)
are converted by calling their method. Then BNs are folded, only where the forward is known exactly:
Conv2d -> BatchNorm2d pairs of a plain ``nn.Sequential`` and the Ultralytics classes listed in
``ULTRALYTICS_RULES`` (by exact class, source forward checked). Any other module holding a conv and a BN
is left as it is and named; a hook on a module that conversion drops or replaces is refused.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reparam.algebra import fold_bn
from reparam.blocks.base import (
    ReparamContainer,
    answers_protocol,
    is_pending,
    outermost_modules,
)
from reparam.checks import strict_bools

__all__ = [
    "ULTRALYTICS_RULES",
    "Conversion",
    "check_model",
    "conversion_method",
    "convert_in_place",
    "fold_conv_bn",
    "is_deployed",
    "randomize_bn_",
    "reparameterize",
    "training_modules",
]

_METHODS = ("reparameterize", "switch_to_deploy")
_HOOKS = (
    ("_forward_pre_hooks", "forward pre-hook"),
    ("_forward_hooks", "forward hook"),
    ("_backward_pre_hooks", "backward pre-hook"),
    ("_backward_hooks", "backward hook"),
)
_MAX_NAMES = 8


def conversion_method(module: nn.Module) -> Callable[[], object] | None:
    """The module's in-place conversion method (``reparameterize`` or the older ``switch_to_deploy``)."""
    for name in _METHODS:
        method = getattr(module, name, None)
        if callable(method):
            return method
    return None


def is_deployed(module: nn.Module) -> bool:
    """True only for protocol modules that say so; a foreign block cannot tell, so it is converted again."""
    return answers_protocol(module) and bool(module.deployed)


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMES])
    return shown + (f" and {len(items) - _MAX_NAMES} more" if len(items) > _MAX_NAMES else "")


def check_model(model: Any) -> None:
    """TypeError unless ``model`` is an eager ``nn.Module``; ValueError naming any tensor on the meta device.

    TorchScript code is frozen (convert first, then script); meta tensors hold no values to fold or compare.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, module in [("", model)] if isinstance(model, torch.jit.ScriptModule) else model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = f"model.{name}" if name else "model"
            raise TypeError(
                f"{where} is a TorchScript module ({type(module).__name__}): reparam converts the eager "
                "nn.Module; convert first, then script/trace the converted model"
            )
    meta = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(
            f"model holds tensors on the meta device (no values): {_names(meta)}; load real weights first "
            "(e.g. model.to_empty(device='cpu') then load_state_dict)"
        )


def training_modules(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` (itself included, as '<model>') that are in training mode."""
    return [name or "<model>" for name, m in model.named_modules() if m.training]


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


def _fused_deconv(deconv: nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.ConvTranspose2d:
    """A transposed conv (groups=1, weight ``(I, O, kh, kw)``) with the BN after it folded in."""
    weight, bias = fold_bn(deconv.weight.transpose(0, 1), bn, deconv.bias)
    fused = nn.ConvTranspose2d(
        deconv.in_channels,
        deconv.out_channels,
        deconv.kernel_size,
        deconv.stride,
        deconv.padding,
        deconv.output_padding,
        groups=1,
        bias=True,
        dilation=deconv.dilation,
    ).to(device=deconv.weight.device, dtype=deconv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight.transpose(0, 1))
        fused.bias.copy_(bias)
    return fused


def _foldable(conv: Any, bn: Any) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.num_features == conv.out_channels
    )


@dataclass
class _Step:
    """One exact in-place change outside the protocol blocks: a BN fold or an Ultralytics fuse contract."""

    name: str
    owner: nn.Module
    change: Callable[[], None]
    dropped: list[nn.Module]
    block: bool = False  # a multi-branch merge (counted with the converted blocks), not a plain BN fold

    def apply(self) -> None:
        """Make the change; the modules it creates take the owner's train/eval mode."""
        _in_owner_mode(self.owner, self.change)


def _in_owner_mode(owner: nn.Module, change: Callable[[], object]) -> None:
    """Run ``change``; every module it adds under ``owner`` takes ``owner``'s train/eval mode."""
    before = {id(m) for m in owner.modules()}
    change()
    for m in owner.modules():
        if id(m) not in before:
            m.training = owner.training


def _replaced_parts(module: nn.Module) -> list[nn.Module]:
    """Every descendant of ``module`` except its ``act``: what a fuse removes or replaces."""
    return [m for n, m in module.named_modules() if n and n != "act" and not n.startswith("act.")]


def _conv_fold(module: nn.Module) -> None:
    module.conv = _fused_conv(module.conv, module.bn)
    delattr(module, "bn")
    module.forward = module.forward_fuse


def _centred_1x1(conv: Any, cv2: Any) -> bool:
    """True when a 1x1 ``cv2`` beside ``conv`` equals the centre tap of ``conv`` (Conv2.fuse_convs' rule)."""
    return (
        type(conv) is nn.Conv2d
        and type(cv2) is nn.Conv2d
        and cv2.bias is None
        and cv2.kernel_size == (1, 1)
        and cv2.padding == (0, 0)
        and cv2.stride == conv.stride
        and cv2.groups == conv.groups
        and conv.padding_mode == cv2.padding_mode == "zeros"
        and all(k % 2 == 1 for k in conv.kernel_size)
        and conv.padding == tuple(d * (k // 2) for k, d in zip(conv.kernel_size, conv.dilation, strict=True))
        and (cv2.in_channels, cv2.out_channels) == (conv.in_channels, conv.out_channels)
    )


def _rule_conv(module: nn.Module) -> Callable[[], None] | str | None:
    """Ultralytics Conv/DWConv: ``act(bn(conv(x)))`` -> ``act(conv'(x))``."""
    if "bn" not in module._modules:
        return None
    if not _foldable(module._modules.get("conv"), module.bn):
        return "its conv/bn are not a plain Conv2d -> BatchNorm2d pair with running statistics"
    return lambda: _conv_fold(module)


def _rule_conv2(module: nn.Module) -> Callable[[], None] | str | None:
    """Ultralytics Conv2: ``act(bn(conv(x) + cv2(x)))``; ``fuse_convs()`` merges cv2, then the Conv fold."""
    if "bn" not in module._modules:
        return None
    if "cv2" not in module._modules or not _centred_1x1(module._modules.get("conv"), module.cv2):
        return "its 1x1 cv2 is not centred in conv (Conv2.fuse_convs would not be exact)"
    if not _foldable(module.conv, module.bn):
        return "its conv/bn are not a plain Conv2d -> BatchNorm2d pair with running statistics"

    def apply() -> None:
        module.fuse_convs()
        _conv_fold(module)

    return apply


def _is_conv_unit(module: Any, k: int, p: int) -> bool:
    """An unfused Ultralytics ``Conv`` of kernel ``k``, padding ``p``, undilated, with an affine BN."""
    return (
        isinstance(module, nn.Module)
        and _ultralytics_name(module) in _PLAIN_CONVS
        and "forward" not in vars(module)
        and getattr(type(module).forward, "__qualname__", None) == "Conv.forward"
        and "bn" in module._modules
        and _foldable(module._modules.get("conv"), module.bn)
        and module.bn.affine
        and module.conv.kernel_size == (k, k)
        and module.conv.padding == (p, p)
        and module.conv.dilation == (1, 1)
    )


def _merge(module: nn.Module, method: str, exact: bool, why: str) -> Callable[[], None] | str:
    """The module's own merge ``method`` then ``forward = forward_fuse`` when ``exact``, else ``why``."""

    def apply() -> None:
        getattr(module, method)()
        module.forward = module.forward_fuse

    return apply if exact else why


def _rule_repconv(module: nn.Module) -> Callable[[], None] | str | None:
    """Ultralytics RepConv: ``act(conv1(x) + conv2(x) + bn(x))``; ``fuse_convs()`` and ``forward_fuse``."""
    if "conv1" not in module._modules:
        return None
    bn = module._modules.get("bn")
    exact = (
        _is_conv_unit(module.conv1, 3, 1)
        and _is_conv_unit(module._modules.get("conv2"), 1, 0)
        and module.conv1.conv.stride == module.conv2.conv.stride
        and module.conv1.conv.groups == module.conv2.conv.groups
        and (bn is None or (type(bn) is nn.BatchNorm2d and bn.track_running_stats and bn.affine))
    )
    why = "its branches are not the 3x3 + 1x1 (+ BN identity) that RepConv.fuse_convs merges exactly"
    return _merge(module, "fuse_convs", exact, why)


def _rule_repvggdw(module: nn.Module) -> Callable[[], None] | str | None:
    """Ultralytics RepVGGDW: ``act(conv(x) + conv1(x))`` (7x7, 3x3 depthwise); ``fuse()``, forward_fuse."""
    if "conv1" not in module._modules:
        return None
    conv, conv1 = module._modules.get("conv"), module.conv1
    exact = (
        _is_conv_unit(conv, 7, 3)
        and _is_conv_unit(conv1, 3, 1)
        and conv.conv.stride == conv1.conv.stride == (1, 1)
        and conv.conv.groups == conv1.conv.groups
    )
    why = "its branches are not the 7x7 + 3x3 depthwise pair that RepVGGDW.fuse merges exactly"
    return _merge(module, "fuse", exact, why)


def _rule_conv_transpose(module: nn.Module) -> Callable[[], None] | str | None:
    """Ultralytics ConvTranspose: ``act(bn(conv_transpose(x)))`` -> ``act(conv_transpose'(x))``."""
    bn, deconv = module._modules.get("bn"), module._modules.get("conv_transpose")
    if bn is None or type(bn) is nn.Identity:
        return None
    if not (
        type(deconv) is nn.ConvTranspose2d
        and deconv.groups == 1
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.num_features == deconv.out_channels
    ):
        return "its conv_transpose/bn are not an ungrouped ConvTranspose2d -> BatchNorm2d pair"

    def apply() -> None:
        module.conv_transpose = _fused_deconv(deconv, bn)
        delattr(module, "bn")
        module.forward = module.forward_fuse

    return apply


_Rule = Callable[[nn.Module], Callable[[], None] | str | None]
# Ultralytics classes whose forward is known exactly (read in the installed source), by exact class:
# qualified name -> (the qualnames its forward and forward_fuse must have, its exact fuse rule). A subclass,
# a patched forward or an instance-level forward is not on the list: it is left alone and named.
ULTRALYTICS_RULES: dict[str, tuple[str, str, _Rule]] = {
    "ultralytics.nn.modules.conv.Conv": ("Conv.forward", "Conv.forward_fuse", _rule_conv),
    "ultralytics.nn.modules.conv.DWConv": ("Conv.forward", "Conv.forward_fuse", _rule_conv),
    "ultralytics.nn.modules.conv.Conv2": ("Conv2.forward", "Conv.forward_fuse", _rule_conv2),
    "ultralytics.nn.modules.conv.RepConv": ("RepConv.forward", "RepConv.forward_fuse", _rule_repconv),
    "ultralytics.nn.modules.conv.ConvTranspose": (
        "ConvTranspose.forward",
        "ConvTranspose.forward_fuse",
        _rule_conv_transpose,
    ),
    "ultralytics.nn.modules.block.RepVGGDW": ("RepVGGDW.forward", "RepVGGDW.forward_fuse", _rule_repvggdw),
}
_PLAIN_CONVS = ("ultralytics.nn.modules.conv.Conv", "ultralytics.nn.modules.conv.DWConv")
_MERGES = (_rule_conv2, _rule_repconv, _rule_repvggdw)


def _ultralytics_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _ultralytics_rule(module: nn.Module) -> Callable[[], None] | str | None:
    """The exact fuse of an allow-listed Ultralytics module, or why it is left alone (None: nothing to do)."""
    forward, forward_fuse, rule = ULTRALYTICS_RULES[_ultralytics_name(module)]
    cls = type(module)
    if "forward" in vars(module) or getattr(cls.forward, "__qualname__", None) != forward:
        return None if rule(module) is None else "its forward is not the class's own"
    if getattr(cls.forward_fuse, "__qualname__", None) != forward_fuse:
        return "its forward_fuse is not the class's own"
    return rule(module)


def _holds_conv_and_bn(module: nn.Module) -> bool:
    kids = list(module.children())
    return any(isinstance(c, nn.modules.batchnorm._BatchNorm) for c in kids) and any(
        isinstance(c, nn.modules.conv._ConvNd) for c in kids
    )


def _sequential_steps(name: str, seq: nn.Sequential, left: list[str]) -> list[_Step]:
    """Adjacent Conv2d -> BatchNorm2d folds of a plain Sequential; other adjacent conv -> BN pairs: named."""
    steps = []
    for a, b in itertools.pairwise(list(seq._modules)):
        conv, bn = seq._modules[a], seq._modules[b]
        where = f"{name}.{a}" if name else a
        if _foldable(conv, bn):

            def apply(a: str = a, b: str = b, conv: Any = conv, bn: Any = bn) -> None:
                seq._modules[a] = _fused_conv(conv, bn)
                seq._modules[b] = nn.Identity()

            steps.append(_Step(where, seq, apply, [conv, bn]))
        elif isinstance(conv, nn.modules.conv._ConvNd) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
            left.append(f"{where} -> {b} ({type(conv).__name__} -> {type(bn).__name__}, not a foldable pair)")
    return steps


def _plan(model: nn.Module, opaque: Callable[[nn.Module], bool]) -> tuple[list[_Step], list[str]]:
    """The exact folds outside the ``opaque`` blocks, and the modules left alone (as 'name (Class): why')."""
    skip = {id(d) for _, b in outermost_modules(model, opaque) for d in b.modules() if d is not b}
    steps: list[_Step] = []
    left: list[str] = []
    for name, m in model.named_modules():
        if id(m) in skip or opaque(m):
            continue
        label = f"{name or '<model>'} ({type(m).__name__})"
        if _ultralytics_name(m) in ULTRALYTICS_RULES:
            skip.update(id(d) for d in m.modules() if d is not m)
            rule = ULTRALYTICS_RULES[_ultralytics_name(m)][2]
            action = _ultralytics_rule(m)
            if isinstance(action, str):
                left.append(f"{label}: {action}")
            elif action is not None:
                steps.append(_Step(name or "<model>", m, action, _replaced_parts(m), rule in _MERGES))
        elif isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
            steps += _sequential_steps(name, m, left)
        elif conversion_method(m) is None and _holds_conv_and_bn(m):
            left.append(f"{label}: its forward is not known to be act(bn(conv(x)))")
    return steps, left


def _opaque_before(module: nn.Module) -> bool:
    """Blocks whose own method converts their subtree (containers are opened: their blocks convert)."""
    return (
        conversion_method(module) is not None
        and not is_deployed(module)
        and not (isinstance(module, ReparamContainer))
    )


@torch.no_grad()
def fold_conv_bn(model: nn.Module) -> int:
    """Fold, in place, every BN whose fold is known exact (see the module doc); count the folds and merges.

    Protocol blocks not yet converted are left to their own ``reparameterize()``. A Sequential subclass
    with its own ``forward`` may use its children in any way, so it is left alone.
    """
    return len(_apply_folds(model)[0])


def _apply_folds(model: nn.Module) -> tuple[list[_Step], list[str]]:
    """Plan and apply every exact fold/merge left in ``model``; the steps done and the modules left alone."""
    steps, left = _plan(model, is_pending)
    for step in steps:
        step.apply()
    return steps, left


def _convert_tree(module: nn.Module, name: str) -> None:
    """Convert ``module`` first (it may read its children's branches), then whatever children remain."""
    method = conversion_method(module)
    if method is not None and not is_deployed(module):
        _in_owner_mode(module, method)
        if answers_protocol(module) and not module.deployed:
            raise RuntimeError(
                f"{name or '<model>'} ({type(module).__name__}).reparameterize() returned but the module "
                "still reports deployed=False: the block breaks the conversion protocol"
            )
    for child_name, child in list(module.named_children()):
        _convert_tree(child, f"{name}.{child_name}" if name else child_name)


def _hooks(module: nn.Module) -> list[str]:
    return [kind for attr, kind in _HOOKS if getattr(module, attr, None)]


def _dropped_hooks(model: nn.Module, dropped: Iterable[nn.Module]) -> list[str]:
    """'name (Class): kinds' for each module that conversion removes or replaces and that carries hooks."""
    ids = {id(m) for m in dropped}
    return [
        f"{name or '<model>'} ({type(m).__name__}): {', '.join(_hooks(m))}"
        for name, m in model.named_modules()
        if id(m) in ids and _hooks(m)
    ]


@dataclass(frozen=True)
class Conversion:
    """What one in-place conversion did: blocks converted (top-most), blocks already deployed, BN folds,
    modules left as they are (with why), hooks it dropped (only when not refused), and the modules that look
    like multi-branch blocks without a conversion method (found by ``verify``, which runs the model)."""

    converted: tuple[str, ...]
    already_deployed: tuple[str, ...]
    bn_folds: int
    left_alone: tuple[str, ...] = ()
    dropped_hooks: tuple[str, ...] = ()
    suspects: tuple[str, ...] = ()

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
                "; modules that look re-parameterizable (two or more parallel conv branches) but lack "
                f"reparameterize(): {_names(list(self.suspects))}"
            )
        return why

    @property
    def left_alone_note(self) -> str | None:
        """One line naming the modules kept as they are because their forward is not known, or None."""
        if not self.left_alone:
            return None
        return f"kept as they are (no exact fold known): {_names(list(self.left_alone))}"


@strict_bools
def convert_in_place(model: nn.Module, *, refuse_hooks: bool = True) -> Conversion:
    """Convert ``model`` in place (blocks, then exact BN folds) and say what was done.

    A hook on a module that conversion removes or replaces would be lost: ValueError naming it, or,
    with ``refuse_hooks=False`` (``verify``), listed in ``dropped_hooks``. Hooks on a converted block
    itself stay (the block keeps its inputs and outputs).
    """
    tops = [(n or "<model>", is_deployed(m)) for n, m in outermost_modules(model, conversion_method)]
    converted = [n for n, deployed in tops if not deployed]
    pending = [b for _, b in outermost_modules(model, _opaque_before)]
    steps, _ = _plan(model, _opaque_before)
    dropped = [d for b in pending for d in _replaced_parts(b)] + [d for s in steps for d in s.dropped]
    hooked = _dropped_hooks(model, dropped)
    if hooked and refuse_hooks:
        raise ValueError(
            f"hooks on modules that conversion removes or replaces would be lost: {_names(hooked)}; "
            "remove them (or register them on the enclosing block, which keeps its inputs and outputs)"
        )
    _convert_tree(model, "")
    steps, left = _apply_folds(model)
    converted += [s.name for s in steps if s.block]
    folds = sum(not s.block for s in steps)
    deployed = tuple(n for n, d in tops if d)
    return Conversion(tuple(converted), deployed, folds, tuple(left), tuple(hooked))


@strict_bools
def reparameterize(model: nn.Module, inplace: bool = False, allow_train: bool = False) -> nn.Module:
    """Convert every re-parameterizable block of ``model`` and fold the BNs whose fold is known exact.

    Returns a converted deep copy (or ``model`` itself with ``inplace=True``). A model with any module in
    training mode is refused unless ``allow_train=True``: its BN statistics are still moving. TorchScript,
    meta tensors and hooks that conversion would drop are refused; modules left alone are named in a warning.
    """
    check_model(model)
    training = training_modules(model)
    if training and not allow_train:
        many = "submodules {} are" if len(training) > 1 else "submodule {} is"
        where = "model is" if training[0] == "<model>" else many.format(_names(training))
        raise ValueError(
            f"{where} in training mode: call model.eval() before converting "
            "(or pass allow_train=True to convert with the current running statistics)"
        )
    target = model if inplace else copy.deepcopy(model)
    note = convert_in_place(target).left_alone_note
    if note:
        warnings.warn(f"reparameterize: {note}", stacklevel=2)
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
