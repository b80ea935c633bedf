"""Conv -> BN -> activation, the plain building unit (same layout and fuse convention as Ultralytics Conv)."""

from __future__ import annotations

from torch import Tensor, nn

from reparam.blocks.base import autopad, check_divisible, check_positive, make_act
from reparam.blocks.registry import register_block

__all__ = ["ConvBNAct"]


@register_block("conv")
class ConvBNAct(nn.Module):
    """``act(BN(conv(x)))``; ``reparam.reparameterize`` folds the BN and switches to ``forward_fuse``."""

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: bool | nn.Module = True,
    ) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, k=k, s=s, g=g, d=d)
        check_divisible(g, c1=c1, c2=c2)
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), dilation=d, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: Tensor) -> Tensor:
        """Forward after the BN has been folded into ``conv``."""
        return self.act(self.conv(x))
