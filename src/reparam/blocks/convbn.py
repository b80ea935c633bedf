"""Conv followed by BatchNorm: the branch unit of RepVGG, DBB and friends."""

from __future__ import annotations

from torch import Tensor, nn

from reparam.algebra import fold_bn

__all__ = ["ConvBN"]


class ConvBN(nn.Sequential):
    """``BN(conv(x))`` with a bias-free conv; ``fused()`` gives the BN-folded kernel and bias."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int = 0, g: int = 1, d: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, p, dilation=d, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)

    def fused(self) -> tuple[Tensor, Tensor]:
        """Kernel and bias of the conv with the BN's eval-mode statistics folded in."""
        return fold_bn(self.conv.weight, self.bn)
