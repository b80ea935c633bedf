"""RepVGG (arXiv 2101.03697) and quantization-aware QARepVGG (arXiv 2212.01593) blocks."""

from __future__ import annotations

from torch import Tensor, nn

from reparam.algebra import (
    add_branches,
    avgpool_kernel,
    fold_bn,
    identity_kernel,
    pad_kernel,
    padding_for_branch,
)
from reparam.blocks.act import Act, resolve_act
from reparam.blocks.base import (
    ReparamBlock,
    check_centred_geometry,
)
from reparam.blocks.convbn import ConvBN
from reparam.blocks.registry import register_block
from reparam.checks import strict_bools

__all__ = ["QARepVGGBlock", "RepVGGBlock"]


@register_block("conv")
class RepVGGBlock(ReparamBlock):
    """``act(BN(conv_kxk(x)) + BN(conv_1x1(x)) + BN(x))``; identity branch only if c1 == c2 and s == 1."""

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 3,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: Act = True,
    ) -> None:
        p = check_centred_geometry(c1, c2, k, s, p, g, d, "RepVGG")
        super().__init__(c1, c2, k, s, p, g, d, resolve_act(act))
        self.rbr_dense = ConvBN(c1, c2, k, s, p, g, d)
        self.rbr_1x1 = ConvBN(c1, c2, 1, s, padding_for_branch(p, k, 1, d), g) if k > 1 else None
        self.rbr_identity = nn.BatchNorm2d(c1) if c1 == c2 and s == 1 else None

    def forward_train(self, x: Tensor) -> Tensor:
        y = self.rbr_dense(x)
        if self.rbr_1x1 is not None:
            y = y + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return y

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        branches = [self.rbr_dense.fused()]
        if self.rbr_1x1 is not None:
            w1, b1 = self.rbr_1x1.fused()
            branches.append((pad_kernel(w1, self.k), b1))
        if self.rbr_identity is not None:
            w = self.rbr_dense.conv.weight
            eye = identity_kernel(self.c1, self.g, self.k, dtype=w.dtype, device=w.device)
            branches.append(fold_bn(eye, self.rbr_identity))
        return add_branches(*branches)


@strict_bools
@register_block("conv")
class QARepVGGBlock(ReparamBlock):
    """Quantization-aware RepVGG: ``act(BN_post(BN(conv_kxk(x)) + conv_1x1(x) + x [+ avgpool(x)]))``.

    The 1x1 and identity branches carry no BN (their sum stays quantization friendly); ``avg=True``
    adds the V2 k x k average-pool branch, which like the identity exists only if c1 == c2 and s == 1.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 3,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: Act = True,
        avg: bool = False,
    ) -> None:
        p = check_centred_geometry(c1, c2, k, s, p, g, d, "QARepVGG")
        if avg and d != 1:
            raise ValueError(f"dilation d={d} is not supported with avg=True: the pool branch is undilated")
        super().__init__(c1, c2, k, s, p, g, d, resolve_act(act))
        self.rbr_dense = ConvBN(c1, c2, k, s, p, g, d)
        p1 = padding_for_branch(p, k, 1, d)
        self.rbr_1x1 = nn.Conv2d(c1, c2, 1, s, p1, groups=g, bias=False) if k > 1 else None
        self.has_identity = c1 == c2 and s == 1
        self.rbr_avg = nn.AvgPool2d(k, 1, p) if avg and self.has_identity and k > 1 else None
        self.bn = nn.BatchNorm2d(c2)

    def forward_train(self, x: Tensor) -> Tensor:
        y = self.rbr_dense(x)
        if self.rbr_1x1 is not None:
            y = y + self.rbr_1x1(x)
        if self.has_identity:
            y = y + x
        if self.rbr_avg is not None:
            y = y + self.rbr_avg(x)
        return self.bn(y)

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        w, b = self.rbr_dense.fused()
        if self.rbr_1x1 is not None:
            w = w + pad_kernel(self.rbr_1x1.weight, self.k).to(w.dtype)
        if self.has_identity:
            w = w + identity_kernel(self.c1, self.g, self.k, dtype=w.dtype, device=w.device)
        if self.rbr_avg is not None:
            w = w + avgpool_kernel(self.c1, self.g, self.k, dtype=w.dtype, device=w.device)
        return fold_bn(w, self.bn, b)
