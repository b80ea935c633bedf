"""A small image classifier family, one layout for every block type, for controlled block comparisons.

Five 3x3 conv stages (28x28 -> 28 -> 14 -> 14 -> 7 -> 7 at widths w, 2w, 2w, 4w, 4w), global average
pooling and a linear head. Only the block class changes between variants, so after conversion every
re-parameterized variant is the plain model's architecture with exactly its parameter count; "dynamic"
(ParameterNet) keeps its expert banks and router, so it deploys larger by design.
"""

from __future__ import annotations

from torch import nn

from reparam.blocks import DBB, OREPA, ConvBNAct, DynamicConvBNAct, QARepVGGBlock, RepVGGBlock

__all__ = ["SMALL_CNN_BLOCKS", "SMALL_CNN_STAGES", "small_cnn"]

SMALL_CNN_BLOCKS: dict[str, type[nn.Module]] = {
    "plain": ConvBNAct,
    "repvgg": RepVGGBlock,
    "qarepvgg": QARepVGGBlock,
    "dbb": DBB,
    "orepa": OREPA,
    "dynamic": DynamicConvBNAct,
}
"""Variant name -> block class used for every 3x3 conv; "plain" is Conv + BN + SiLU."""

SMALL_CNN_STAGES: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (2, 1), (4, 2), (4, 1))
"""(width multiple, stride) of each conv stage."""


def small_cnn(
    variant: str = "plain", width: int = 16, num_classes: int = 10, in_channels: int = 1
) -> nn.Sequential:
    """The small CNN with every 3x3 conv a ``SMALL_CNN_BLOCKS[variant]`` block (SiLU activations)."""
    if variant not in SMALL_CNN_BLOCKS:
        raise ValueError(f"variant must be one of {list(SMALL_CNN_BLOCKS)}, got {variant!r}")
    for name, value in (("width", width), ("num_classes", num_classes), ("in_channels", in_channels)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    block = SMALL_CNN_BLOCKS[variant]
    layers: list[nn.Module] = []
    c1 = in_channels
    for mult, stride in SMALL_CNN_STAGES:
        layers.append(block(c1, width * mult, 3, stride, act=True))
        c1 = width * mult
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c1, num_classes)]
    return nn.Sequential(*layers)
