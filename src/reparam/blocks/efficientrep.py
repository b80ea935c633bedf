"""YOLOv6 EfficientRep building blocks (arXiv 2209.02976, v3.0: arXiv 2301.05586).

Stage containers (RepBlock, BottleRep, BepC3), the SPPF variants, the learned 2x upsampler and the v3
bidirectional concat (BiC), matching YOLOv6 v3.0 ``yolov6/layers/common.py``. The containers hold
re-parameterizable basic blocks (RepVGGBlock, QARepVGGBlock, OREPA or a plain ConvBNAct): as
:class:`~reparam.blocks.base.ReparamContainer` they answer the conversion protocol by converting their
blocks, which leaves the container's function unchanged. Every block's ``act`` defaults to True, the
model's default activation (see ``reparam.blocks.act``); YOLOv6's ReLU is passed explicitly by the
builders in ``reparam.models.yolov6``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reparam.blocks.act import Act, resolve_act
from reparam.blocks.base import ReparamContainer, check_odd_kernel, check_positive
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
    "resolve_basic_block",
]

BASIC_BLOCKS = ("RepVGGBlock", "QARepVGGBlock", "OREPA", "ConvBNAct")
"""Registry names accepted as the basic 3x3 block of RepBlock, BottleRep and BepC3."""

BlockChoice = str | type[nn.Module]


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
        try:
            inspect.signature(block).bind(1, 1, 3, 1, act=nn.Identity())
        except TypeError:
            raise ValueError(
                f"block={block.__name__} must accept Ultralytics-style arguments (c1, c2, k, s, act=...), "
                f"as {', '.join(BASIC_BLOCKS)} do"
            ) from None
        return block
    raise ValueError(f"block must be one of {', '.join(BASIC_BLOCKS)} or a module class, got {block!r}")


def _basic(block: type[nn.Module], c1: int, c2: int, act: Act) -> nn.Module:
    """One 3x3 stride-1 basic block, built with Ultralytics-style arguments ``(c1, c2, k, s, act=...)``."""
    return block(c1, c2, 3, 1, act=resolve_act(act))


def _check_ratio(e: float, c2: int) -> int:
    """Hidden width ``int(c2 * e)`` as in YOLOv6; ValueError unless it is at least one channel."""
    if not isinstance(e, int | float) or isinstance(e, bool) or not e > 0:
        raise ValueError(f"e must be a positive number, got {type(e).__name__} {e!r}")
    hidden = int(c2 * e)
    if hidden < 1:
        raise ValueError(f"hidden channels int(c2 * e) = int({c2} * {e}) must be >= 1")
    return hidden


def _no_shortcut_flag(name: str, slot: str, value: object, rows: str) -> None:
    """ValueError for a C2f-style shortcut flag (``[c2, True]``) given to a block that has no shortcut."""
    if isinstance(value, bool):
        raise ValueError(
            f"{name} got a C2f-style shortcut flag {value} in place of `{slot}`; {name} has no shortcut: "
            f"write the row as {rows}"
        )


@register_block("repeat")
class RepBlock(ReparamContainer):
    """A stage of ``n`` basic blocks: ``block(c1 -> c2)`` then ``n - 1`` x ``block(c2 -> c2)``, all 3x3 s1.

    ``block`` is a name from ``BASIC_BLOCKS`` (YAML: ``[c2, 'QARepVGGBlock']``) or a module class;
    ``act`` anything :func:`~reparam.blocks.act.resolve_act` accepts (True: the model's default).
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, block: BlockChoice = "RepVGGBlock", act: Act = True
    ) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, n=n)
        _no_shortcut_flag(
            "RepBlock", "block", block, "[-1, n, RepBlock, [c2]] or [-1, n, RepBlock, [c2, 'QARepVGGBlock']]"
        )
        cls = resolve_basic_block(block)
        self.conv1 = _basic(cls, c1, c2, act)
        self.block = nn.Sequential(*(_basic(cls, c2, c2, act) for _ in range(n - 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.block(self.conv1(x))


@register_block("conv")
class BottleRep(ReparamContainer):
    """``conv2(conv1(x)) + alpha * x`` with a learnable scalar ``alpha`` (init 1), residual only if c1 == c2.

    ``alpha`` multiplies the skip path after the second block's activation, so it stays a parameter
    in the deploy form (it cannot be folded into a conv). Without the residual there is no ``alpha``.
    """

    def __init__(self, c1: int, c2: int, block: BlockChoice = "RepVGGBlock", act: Act = True) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2)
        _no_shortcut_flag("BottleRep", "block", block, "[-1, 1, BottleRep, [c2]] or [c2, 'QARepVGGBlock']")
        cls = resolve_basic_block(block)
        self.conv1 = _basic(cls, c1, c2, act)
        self.conv2 = _basic(cls, c2, c2, act)
        self.shortcut = c1 == c2
        self.alpha = nn.Parameter(torch.ones(1)) if self.shortcut else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y + self.alpha * x if self.alpha is not None else y


@register_block("repeat")
class BepC3(ReparamContainer):
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
        act: Act = True,
    ) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, n=n)
        _no_shortcut_flag("BepC3", "e", e, "[-1, n, BepC3, [c2]] or [-1, n, BepC3, [c2, e]]")
        c_ = _check_ratio(e, c2)
        self.cv1 = ConvBNAct(c1, c_, 1, 1, act=act)
        self.cv2 = ConvBNAct(c1, c_, 1, 1, act=act)
        self.cv3 = ConvBNAct(2 * c_, c2, 1, 1, act=act)
        self.m = nn.Sequential(*(BottleRep(c_, c_, block, act) for _ in range(max(n // 2, 1))))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


@register_block("conv")
class SimSPPF(ReparamContainer):
    """Simplified SPPF: 1x1 (c1 -> c1/2), three serial ``maxpool(k, 1, k//2)``, concat, 1x1 -> c2."""

    def __init__(self, c1: int, c2: int, k: int = 5, act: Act = True) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, k=k)
        check_odd_kernel(k)
        if c1 < 2:
            raise ValueError(f"c1={c1} must be >= 2: the hidden width is c1 // 2")
        c_ = c1 // 2
        self.cv1 = ConvBNAct(c1, c_, 1, 1, act=act)
        self.cv2 = ConvBNAct(4 * c_, c2, 1, 1, act=act)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), dim=1))


@register_block("conv")
class SimCSPSPPF(ReparamContainer):
    """YOLOv6 v3 CSP SPPF: ``cv7(cat(cv2(x), cv6(cv5(cat(x1, pools...)))))``, x1 = cv4(cv3(cv1(x))).

    Hidden width ``int(c2 * e)``; cv3 and cv6 are 3x3, the rest 1x1; all ConvBNAct with activation ``act``.
    """

    def __init__(self, c1: int, c2: int, k: int = 5, e: float = 0.5, act: Act = True) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, k=k)
        check_odd_kernel(k)
        c_ = _check_ratio(e, c2)

        def conv(a: int, b: int, kk: int) -> ConvBNAct:
            return ConvBNAct(a, b, kk, 1, act=act)

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
class Transpose(ReparamContainer):
    """Learned upsampling: ``ConvTranspose2d(c1, c2, k, s, bias=True)``, 2x by default (YOLOv6 Rep-PAN).

    Already in deploy form (nothing to fold): ``deployed`` is always True and ``reparameterize()`` does
    nothing, so code that walks a model through the protocol needs no special case for it.
    """

    def __init__(self, c1: int, c2: int, k: int = 2, s: int = 2) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, k=k, s=s)
        self.upsample_transpose = nn.ConvTranspose2d(c1, c2, k, s, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample_transpose(x)


@register_block("custom")
class BiC(ReparamContainer):
    """YOLOv6 v3 bidirectional concat: ``cv3(cat(up(top), cv1(same), down(cv2(lower))))``, all -> c2.

    ``c1`` is a sequence of the three input channel counts ``(top, same, lower)``: ``top`` has half the
    resolution of the output (upsampled by a Transpose), ``same`` the output's, ``lower`` twice it
    (reduced by a 1x1, then a 3x3 stride-2 conv). forward takes the list ``[top, same, lower]``.
    Ultralytics YAML: ``[[top_idx, same_idx, lower_idx], 1, BiC, [c2]]``; the integration passes
    ``c1 = [ch[f] for f in from]`` and the width-scaled ``c2``. Its convs use activation ``act``.
    """

    def __init__(self, c1: Sequence[int], c2: int, act: Act = True) -> None:
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
        self.cv1 = ConvBNAct(same, c2, 1, 1, act=act)
        self.cv2 = ConvBNAct(lower, c2, 1, 1, act=act)
        self.downsample = ConvBNAct(c2, c2, 3, 2, act=act)
        self.cv3 = ConvBNAct(3 * c2, c2, 1, 1, act=act)

    def forward(self, x: Sequence[Tensor]) -> Tensor:
        top, same, lower = x
        return self.cv3(
            torch.cat((self.upsample(top), self.cv1(same), self.downsample(self.cv2(lower))), dim=1)
        )
