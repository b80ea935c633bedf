"""YOLOv6 EfficientRep building blocks (arXiv 2209.02976, v3.0: arXiv 2301.05586).

Stage containers (RepBlock, BottleRep, BepC3), the SPPF variants, the learned 2x upsampler and the v3
bidirectional concat (BiC), matching YOLOv6 v3.0 ``yolov6/layers/common.py``. The containers hold
re-parameterizable basic blocks (RepVGGBlock, QARepVGGBlock, OREPA or a plain ConvBNAct) and need no
conversion method of their own: ``reparam.reparameterize`` converts their children and folds the
plain conv+BN layers, which leaves the container's function unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reparam.blocks.base import check_odd_kernel, check_positive, make_act
from reparam.blocks.conv import ConvBNAct
from reparam.blocks.registry import get_block, register_block

__all__ = [
    "BASIC_BLOCKS",
    "BepC3",
    "BiC",
    "BottleRep",
    "RepBlock",
    "SimCSPSPPF",
    "SimSPPF",
    "Transpose",
    "resolve_act",
    "resolve_basic_block",
]

BASIC_BLOCKS = ("RepVGGBlock", "QARepVGGBlock", "OREPA", "ConvBNAct")
"""Registry names accepted as the basic 3x3 block of RepBlock, BottleRep and BepC3."""

_ACTS = {"relu": nn.ReLU, "silu": nn.SiLU}

Act = bool | str | nn.Module
BlockChoice = str | type[nn.Module]


def resolve_act(act: Act) -> nn.Module:
    """An activation from a YAML-friendly spec: 'relu' or 'silu' (new module), else as ``make_act``."""
    if isinstance(act, str):
        if act not in _ACTS:
            raise ValueError(f"act must be one of {sorted(_ACTS)}, a bool or an nn.Module, got {act!r}")
        return _ACTS[act]()
    return make_act(act)


def resolve_basic_block(block: BlockChoice) -> type[nn.Module]:
    """The basic block class for a registry name in ``BASIC_BLOCKS`` or an ``nn.Module`` subclass.

    Names resolve through the block registry at construction time, so optional families (OREPA) are
    found once their module has been imported.
    """
    if isinstance(block, str):
        if block not in BASIC_BLOCKS:
            raise ValueError(
                f"block must be one of {', '.join(BASIC_BLOCKS)} or a module class, got {block!r}"
            )
        return get_block(block)
    if isinstance(block, type) and issubclass(block, nn.Module):
        return block
    raise ValueError(f"block must be one of {', '.join(BASIC_BLOCKS)} or a module class, got {block!r}")


def _basic(block: type[nn.Module], c1: int, c2: int, act: Act) -> nn.Module:
    """One 3x3 stride-1 basic block, built with Ultralytics-style arguments ``(c1, c2, k, s, act=...)``."""
    return block(c1, c2, 3, 1, act=resolve_act(act))


def _check_ratio(e: float, c2: int) -> int:
    """Hidden width ``int(c2 * e)`` as in YOLOv6; ValueError unless it is at least one channel."""
    if not isinstance(e, int | float) or isinstance(e, bool) or not e > 0:
        raise ValueError(f"e must be a positive number, got {e!r}")
    hidden = int(c2 * e)
    if hidden < 1:
        raise ValueError(f"hidden channels int(c2 * e) = int({c2} * {e}) must be >= 1")
    return hidden


@register_block("repeat")
class RepBlock(nn.Module):
    """A stage of ``n`` basic blocks: ``block(c1 -> c2)`` then ``n - 1`` x ``block(c2 -> c2)``, all 3x3 s1.

    ``block`` is a name from ``BASIC_BLOCKS`` (YAML: ``[c2, 'QARepVGGBlock']``) or a module class;
    ``act`` is 'relu' (YOLOv6 n/s/m), 'silu', a bool (Ultralytics convention) or a module.
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, block: BlockChoice = "RepVGGBlock", act: Act = "relu"
    ) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, n=n)
        cls = resolve_basic_block(block)
        self.conv1 = _basic(cls, c1, c2, act)
        self.block = nn.Sequential(*(_basic(cls, c2, c2, act) for _ in range(n - 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.block(self.conv1(x))


@register_block("conv")
class BottleRep(nn.Module):
    """``conv2(conv1(x)) + alpha * x`` with a learnable scalar ``alpha`` (init 1), residual only if c1 == c2.

    ``alpha`` multiplies the skip path after the second block's activation, so it stays a parameter
    in the deploy form (it cannot be folded into a conv). Without the residual there is no ``alpha``.
    """

    def __init__(self, c1: int, c2: int, block: BlockChoice = "RepVGGBlock", act: Act = "relu") -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2)
        cls = resolve_basic_block(block)
        self.conv1 = _basic(cls, c1, c2, act)
        self.conv2 = _basic(cls, c2, c2, act)
        self.shortcut = c1 == c2
        self.alpha = nn.Parameter(torch.ones(1)) if self.shortcut else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y + self.alpha * x if self.alpha is not None else y


@register_block("repeat")
class BepC3(nn.Module):
    """CSPStackRep: ``cv3(cat(m(cv1(x)), cv2(x)))`` with hidden width ``int(c2 * e)``.

    ``m`` stacks ``max(n // 2, 1)`` BottleReps (``n`` counts basic-block layers, as in YOLOv6, where a
    BottleRep holds two); cv1/cv2/cv3 are 1x1 ConvBNAct with the same activation as the basic blocks.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        e: float = 0.5,
        block: BlockChoice = "RepVGGBlock",
        act: Act = "relu",
    ) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, n=n)
        c_ = _check_ratio(e, c2)
        self.cv1 = ConvBNAct(c1, c_, 1, 1, act=resolve_act(act))
        self.cv2 = ConvBNAct(c1, c_, 1, 1, act=resolve_act(act))
        self.cv3 = ConvBNAct(2 * c_, c2, 1, 1, act=resolve_act(act))
        self.m = nn.Sequential(*(BottleRep(c_, c_, block, act) for _ in range(max(n // 2, 1))))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


@register_block("conv")
class SimSPPF(nn.Module):
    """Simplified SPPF: 1x1 (c1 -> c1/2), three serial ``maxpool(k, 1, k//2)``, concat, 1x1 -> c2 (ReLU)."""

    def __init__(self, c1: int, c2: int, k: int = 5, act: Act = "relu") -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, k=k)
        check_odd_kernel(k)
        if c1 < 2:
            raise ValueError(f"c1={c1} must be >= 2: the hidden width is c1 // 2")
        c_ = c1 // 2
        self.cv1 = ConvBNAct(c1, c_, 1, 1, act=resolve_act(act))
        self.cv2 = ConvBNAct(4 * c_, c2, 1, 1, act=resolve_act(act))
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), dim=1))


@register_block("conv")
class SimCSPSPPF(nn.Module):
    """YOLOv6 v3 CSP SPPF: ``cv7(cat(cv2(x), cv6(cv5(cat(x1, pools...)))))``, x1 = cv4(cv3(cv1(x))).

    Hidden width ``int(c2 * e)``; cv3 and cv6 are 3x3, the rest 1x1; all ConvBNAct with ReLU by default.
    """

    def __init__(self, c1: int, c2: int, k: int = 5, e: float = 0.5, act: Act = "relu") -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, k=k)
        check_odd_kernel(k)
        c_ = _check_ratio(e, c2)

        def conv(a: int, b: int, kk: int) -> ConvBNAct:
            return ConvBNAct(a, b, kk, 1, act=resolve_act(act))

        self.cv1 = conv(c1, c_, 1)
        self.cv2 = conv(c1, c_, 1)
        self.cv3 = conv(c_, c_, 3)
        self.cv4 = conv(c_, c_, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)
        self.cv5 = conv(4 * c_, c_, 1)
        self.cv6 = conv(c_, c_, 3)
        self.cv7 = conv(2 * c_, c2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.m(x1)
        y2 = self.m(y1)
        y3 = self.cv6(self.cv5(torch.cat((x1, y1, y2, self.m(y2)), dim=1)))
        return self.cv7(torch.cat((self.cv2(x), y3), dim=1))


@register_block("conv")
class Transpose(nn.Module):
    """Learned upsampling: ``ConvTranspose2d(c1, c2, k, s, bias=True)``, 2x by default (YOLOv6 Rep-PAN)."""

    def __init__(self, c1: int, c2: int, k: int = 2, s: int = 2) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, k=k, s=s)
        self.upsample_transpose = nn.ConvTranspose2d(c1, c2, k, s, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample_transpose(x)


@register_block("custom")
class BiC(nn.Module):
    """YOLOv6 v3 bidirectional concat: ``cv3(cat(up(top), cv1(same), down(cv2(lower))))``, all -> c2.

    ``c1`` is a sequence of the three input channel counts ``(top, same, lower)``: ``top`` has half the
    resolution of the output (upsampled by a Transpose), ``same`` the output's, ``lower`` twice it
    (reduced by a 1x1, then a 3x3 stride-2 conv). forward takes the list ``[top, same, lower]``.
    Ultralytics YAML: ``[[top_idx, same_idx, lower_idx], 1, BiC, [c2]]``; the integration passes
    ``c1 = [ch[f] for f in from]`` and the width-scaled ``c2``. Plain convs use ReLU by default.
    """

    def __init__(self, c1: Sequence[int], c2: int, act: Act = "relu") -> None:
        super().__init__()
        if (
            isinstance(c1, str | bytes)
            or not isinstance(c1, Sequence)
            or len(c1) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in c1)
        ):
            raise ValueError(f"c1 must be three positive channel counts (top, same, lower), got {c1!r}")
        check_positive(c2=c2)
        top, same, lower = c1
        self.upsample = Transpose(top, c2)
        self.cv1 = ConvBNAct(same, c2, 1, 1, act=resolve_act(act))
        self.cv2 = ConvBNAct(lower, c2, 1, 1, act=resolve_act(act))
        self.downsample = ConvBNAct(c2, c2, 3, 2, act=resolve_act(act))
        self.cv3 = ConvBNAct(3 * c2, c2, 1, 1, act=resolve_act(act))

    def forward(self, x: Sequence[Tensor]) -> Tensor:
        top, same, lower = x
        return self.cv3(
            torch.cat((self.upsample(top), self.cv1(same), self.downsample(self.cv2(lower))), dim=1)
        )
