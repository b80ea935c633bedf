"""YOLOv6 v3.0 EfficientRep backbone and Rep-PAN / Rep-BiFPAN neck as plain PyTorch modules.

Defaults reproduce the official YOLOv6 v3.0 configs (``configs/yolov6{n,s,m,l}.py``):
n/s: EfficientRep with RepVGG blocks, RepBlock stages, SimCSPSPPF, ReLU; m: CSPBepBackbone (BepC3
stages, e = 2/3), RepVGG blocks, SimSPPF, ReLU; l: CSPBepBackbone (e = 1/2) trained as plain
Conv+BN+SiLU (``training_mode = "conv_silu"``) with a SiLU SPPF. All four expose the extra P2 output
(``fuse_P2=True``) that the v3.0 BiC neck consumes. No Ultralytics import: any detector can use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reparam.blocks.act import Act, resolve_act
from reparam.blocks.base import ReparamContainer, check_positive
from reparam.blocks.conv import ConvBNAct
from reparam.blocks.efficientrep import (
    BepC3,
    BiC,
    BlockChoice,
    RepBlock,
    SimCSPSPPF,
    SimSPPF,
    Transpose,
    resolve_basic_block,
)
from reparam.checks import strict_bools

__all__ = [
    "BACKBONE_CHANNELS",
    "BACKBONE_REPEATS",
    "NECK_CHANNELS",
    "NECK_REPEATS",
    "VARIANTS",
    "EfficientRep",
    "RepPANNeck",
    "YOLOv6Variant",
    "efficientrep_backbone",
    "get_variant",
    "reppan_neck",
    "scale_channels",
    "scale_depth",
]

BACKBONE_CHANNELS = (64, 128, 256, 512, 1024)
BACKBONE_REPEATS = (1, 6, 12, 18, 6)
NECK_CHANNELS = (256, 128, 128, 256, 256, 512)
NECK_REPEATS = (12, 12, 12, 12)


@strict_bools
@dataclass(frozen=True)
class YOLOv6Variant:
    """One YOLOv6 v3.0 model size: scaling, basic block, activation and stage/SPPF types."""

    depth: float
    width: float
    block: str
    act: str
    csp_e: float | None
    """Hidden ratio of BepC3 stages (m/l); None for RepBlock stages (n/s)."""
    cspsppf: bool
    """SimCSPSPPF (v3.0 n/s) instead of SimSPPF/SPPF at the end of the backbone."""


VARIANTS: dict[str, YOLOv6Variant] = {
    "n": YOLOv6Variant(0.33, 0.25, "RepVGGBlock", "relu", None, True),
    "s": YOLOv6Variant(0.33, 0.50, "RepVGGBlock", "relu", None, True),
    "m": YOLOv6Variant(0.60, 0.75, "RepVGGBlock", "relu", 2 / 3, False),
    "l": YOLOv6Variant(1.0, 1.0, "ConvBNAct", "silu", 1 / 2, False),
}


def get_variant(variant: str) -> YOLOv6Variant:
    """The settings of a YOLOv6 variant name; ValueError listing the known ones otherwise."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def scale_channels(c: int, width: float) -> int:
    """YOLOv6 width scaling: ``ceil(c * width / 8) * 8``."""
    return math.ceil(c * width / 8) * 8


def scale_depth(n: int, depth: float) -> int:
    """YOLOv6 depth scaling: ``max(round(n * depth), 1)`` for n > 1, n itself otherwise."""
    return max(round(n * depth), 1) if n > 1 else n


def _stage(c1: int, c2: int, n: int, block: BlockChoice, act: Act, csp_e: float | None) -> nn.Module:
    if csp_e is None:
        return RepBlock(c1, c2, n, block, act)
    return BepC3(c1, c2, n, csp_e, block, act)


def _check_channels(name: str, values: Sequence[int], length: int) -> tuple[int, ...]:
    if (
        isinstance(values, str)
        or not isinstance(values, Sequence)
        or len(values) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise ValueError(f"{name} must be {length} positive integers, got {values!r}")
    return tuple(values)


@strict_bools
class EfficientRep(ReparamContainer):
    """EfficientRep / CSPBepBackbone: stem (3x3 s2), four stages [3x3 s2 block, RepBlock or BepC3], SPPF.

    ``channels`` and ``repeats`` are the scaled 5-entry lists of YOLOv6 (``repeats[0]`` belongs to the
    stem, a single block). forward returns ``(P2, P3, P4, P5)`` (strides 4, 8, 16, 32), or
    ``(P3, P4, P5)`` with ``return_p2=False``. ``act`` defaults to the model's default activation (True),
    as every block's; :func:`efficientrep_backbone` passes the variant's (ReLU for n/s/m).
    """

    def __init__(
        self,
        channels: Sequence[int],
        repeats: Sequence[int],
        block: BlockChoice = "RepVGGBlock",
        act: Act = True,
        csp_e: float | None = None,
        cspsppf: bool = True,
        in_channels: int = 3,
        return_p2: bool = True,
    ) -> None:
        super().__init__()
        c = _check_channels("channels", channels, 5)
        r = _check_channels("repeats", repeats, 5)
        check_positive(in_channels=in_channels)
        cls = resolve_basic_block(block)
        self.return_p2 = return_p2
        self.stem = cls(in_channels, c[0], 3, 2, act=resolve_act(act))
        stages = []
        for i in range(1, 5):
            stages.append(
                nn.Sequential(
                    cls(c[i - 1], c[i], 3, 2, act=resolve_act(act)),
                    _stage(c[i], c[i], r[i], block, act, csp_e),
                )
            )
        sppf = SimCSPSPPF(c[4], c[4], 5, act=act) if cspsppf else SimSPPF(c[4], c[4], 5, act=act)
        stages[-1].append(sppf)
        self.ERBlock_2, self.ERBlock_3, self.ERBlock_4, self.ERBlock_5 = stages
        first = 1 if return_p2 else 2
        self.out_channels = list(c[first:])
        self.strides = [2 ** (i + 1) for i in range(first, 5)]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        p2 = self.ERBlock_2(self.stem(x))
        p3 = self.ERBlock_3(p2)
        p4 = self.ERBlock_4(p3)
        p5 = self.ERBlock_5(p4)
        return (p2, p3, p4, p5) if self.return_p2 else (p3, p4, p5)


@strict_bools
class RepPANNeck(ReparamContainer):
    """YOLOv6 Rep-PAN neck; with ``bic=True`` the v3.0 Rep-BiFPAN (BiC fusion, consumes P2).

    Top-down: 1x1 reduce, then BiC (or Transpose up + concat), then a stage; bottom-up: 3x3 s2 conv,
    concat with the reduced map, stage. ``in_channels`` are the backbone outputs (P2..P5 with BiC,
    P3..P5 without); ``channels``/``repeats`` the scaled 6/4-entry neck lists of YOLOv6. Reduce,
    fusion and downsample convs use ``fusion_act`` (ReLU in every official variant, which
    :func:`reppan_neck` passes); stages use ``act``. Both default to the model's default activation (True).
    forward returns ``(N3, N4, N5)`` at strides 8, 16, 32.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: Sequence[int],
        repeats: Sequence[int],
        block: BlockChoice = "RepVGGBlock",
        act: Act = True,
        csp_e: float | None = None,
        bic: bool = True,
        fusion_act: Act = True,
    ) -> None:
        super().__init__()
        ins = _check_channels("in_channels", in_channels, 4 if bic else 3)
        n = _check_channels("channels", channels, 6)
        r = _check_channels("repeats", repeats, 4)
        p3, p4, p5 = ins[-3:]
        self.bic = bic

        def conv(c1: int, c2: int, k: int, s: int) -> ConvBNAct:
            return ConvBNAct(c1, c2, k, s, act=fusion_act)

        self.reduce_layer0 = conv(p5, n[0], 1, 1)
        self.reduce_layer1 = conv(n[0], n[1], 1, 1)
        if bic:
            self.bifusion0 = BiC([n[0], p4, p3], n[0], act=fusion_act)
            self.bifusion1 = BiC([n[1], p3, ins[0]], n[1], act=fusion_act)
            self.rep_p4 = _stage(n[0], n[0], r[0], block, act, csp_e)
            self.rep_p3 = _stage(n[1], n[1], r[1], block, act, csp_e)
        else:
            self.upsample0 = Transpose(n[0], n[0])
            self.upsample1 = Transpose(n[1], n[1])
            self.rep_p4 = _stage(p4 + n[0], n[0], r[0], block, act, csp_e)
            self.rep_p3 = _stage(p3 + n[1], n[1], r[1], block, act, csp_e)
        self.downsample2 = conv(n[1], n[2], 3, 2)
        self.rep_n3 = _stage(n[1] + n[2], n[3], r[2], block, act, csp_e)
        self.downsample1 = conv(n[3], n[4], 3, 2)
        self.rep_n4 = _stage(n[0] + n[4], n[5], r[3], block, act, csp_e)
        self.out_channels = [n[1], n[3], n[5]]
        self.strides = [8, 16, 32]

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        expected = 4 if self.bic else 3
        if len(features) != expected:
            raise ValueError(f"features must hold {expected} maps ({'P2..P5' if self.bic else 'P3..P5'})")
        x3, x4, x5 = features[-3:]
        fpn0 = self.reduce_layer0(x5)
        if self.bic:
            f_out0 = self.rep_p4(self.bifusion0([fpn0, x4, x3]))
        else:
            f_out0 = self.rep_p4(torch.cat((self.upsample0(fpn0), x4), 1))
        fpn1 = self.reduce_layer1(f_out0)
        if self.bic:
            pan3 = self.rep_p3(self.bifusion1([fpn1, x3, features[0]]))
        else:
            pan3 = self.rep_p3(torch.cat((self.upsample1(fpn1), x3), 1))
        pan4 = self.rep_n3(torch.cat((self.downsample2(pan3), fpn1), 1))
        pan5 = self.rep_n4(torch.cat((self.downsample1(pan4), fpn0), 1))
        return pan3, pan4, pan5


@strict_bools
def efficientrep_backbone(
    variant: str = "n",
    *,
    block: BlockChoice | None = None,
    act: Act | None = None,
    in_channels: int = 3,
    return_p2: bool = True,
) -> EfficientRep:
    """The YOLOv6 v3.0 backbone of ``variant`` ('n', 's', 'm', 'l'); ``block``/``act`` override its defaults.

    ``block`` is a name from ``reparam.blocks.efficientrep.BASIC_BLOCKS`` or a module class (e.g.
    'QARepVGGBlock' for quantization-friendly training). Returns (P2, P3, P4, P5) unless ``return_p2=False``.
    """
    v = get_variant(variant)
    return EfficientRep(
        channels=[scale_channels(c, v.width) for c in BACKBONE_CHANNELS],
        repeats=[scale_depth(n, v.depth) for n in BACKBONE_REPEATS],
        block=v.block if block is None else block,
        act=v.act if act is None else act,
        csp_e=v.csp_e,
        cspsppf=v.cspsppf,
        in_channels=in_channels,
        return_p2=return_p2,
    )


@strict_bools
def reppan_neck(
    variant: str = "n",
    *,
    block: BlockChoice | None = None,
    act: Act | None = None,
    bic: bool = True,
    in_channels: Sequence[int] | None = None,
    fusion_act: Act = "relu",
) -> RepPANNeck:
    """The YOLOv6 v3.0 neck of ``variant``: Rep-BiFPAN (``bic=True``, inputs P2..P5) or Rep-PAN (P3..P5).

    ``in_channels`` defaults to the channels of ``efficientrep_backbone(variant)``; pass another
    backbone's channels to put the neck on it. m/l use BepC3 stages, n/s RepBlock stages.
    """
    v = get_variant(variant)
    backbone = [scale_channels(c, v.width) for c in BACKBONE_CHANNELS]
    if in_channels is None:
        in_channels = backbone[1:] if bic else backbone[2:]
    return RepPANNeck(
        in_channels=in_channels,
        channels=[scale_channels(c, v.width) for c in NECK_CHANNELS],
        repeats=[scale_depth(n, v.depth) for n in NECK_REPEATS],
        block=v.block if block is None else block,
        act=v.act if act is None else act,
        csp_e=v.csp_e,
        bic=bic,
        fusion_act=fusion_act,
    )
