"""Conv -> BN -> activation, the plain building unit (same layout and fuse convention as Ultralytics Conv)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reparam.algebra import fold_bn
from reparam.blocks.act import Act, resolve_act
from reparam.blocks.base import autopad, check_divisible, check_positive
from reparam.blocks.registry import register_block

__all__ = ["ConvBNAct"]


@register_block("conv")
class ConvBNAct(nn.Module):
    """``act(BN(conv(x)))``; ``reparameterize()`` folds the BN into ``conv`` (bias=True) and removes ``bn``.

    The layout (``conv``, ``bn``, ``act``, ``forward_fuse``) is Ultralytics ``Conv``'s, so tools that fold
    a Conv's BN themselves (Ultralytics ``fuse()``) handle it too.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: Act = True,
    ) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, k=k, s=s, g=g, d=d)
        check_divisible(g, c1=c1, c2=c2)
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), dilation=d, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = resolve_act(act)

    @property
    def deployed(self) -> bool:
        """True once the BN has been folded into ``conv`` (by ``reparameterize`` or an Ultralytics fuse)."""
        return "bn" not in self._modules

    def forward(self, x: Tensor) -> Tensor:
        if self.deployed:
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: Tensor) -> Tensor:
        """Forward after the BN has been folded into ``conv`` (Ultralytics' name for it)."""
        return self.act(self.conv(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN into the conv (computed in fp32 or wider, stored in the conv's dtype), in place."""
        if self.deployed:
            return
        conv = self.conv
        weight, bias = fold_bn(conv.weight, self.bn, conv.bias)
        conv.weight.copy_(weight)
        conv.bias = nn.Parameter(bias.to(device=conv.weight.device, dtype=conv.weight.dtype))
        del self.bn
