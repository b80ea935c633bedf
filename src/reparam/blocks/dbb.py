"""DBB: Diverse Branch Block (CVPR 2021, arXiv 2103.13425), the offline re-parameterization baseline.

Every branch runs as its own convolution(s) with its own BN during training (which is what makes DBB
expensive to train, and what OREPA removes). Branches follow the reference implementation
(DingXiaoH/DiverseBranchBlock): kxk; 1x1 (if g < c2); 1x1 -> BN-and-pad -> kxk average pool -> BN;
identity-initialised 1x1 -> BN-and-pad -> kxk -> BN. "BN and pad" pads the BN output with the BN's
own value for a zero input, so that the 1x1 -> kxk merge is exact at the borders too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam.algebra import (
    add_branches,
    avgpool_kernel,
    fold_bn,
    identity_kernel,
    merge_1x1_kxk,
    pad_kernel,
    work_dtype,
)
from reparam.blocks.act import Act, resolve_act
from reparam.blocks.base import (
    ReparamBlock,
    check_centred_geometry,
    check_divisible,
)
from reparam.blocks.convbn import ConvBN
from reparam.blocks.registry import register_block

__all__ = ["DBB", "BNAndPad", "IdentityConv1x1", "dbb_internal_width"]


def dbb_internal_width(c1: int, c2: int, g: int) -> int:
    """Width of DBB's 1x1 -> kxk branch: ``c1`` if ``g < c2`` else ``2 * c1`` (depthwise; reference rule)."""
    return c1 if g < c2 else 2 * c1


class BNAndPad(nn.BatchNorm2d):
    """BatchNorm whose output is padded by ``pad`` pixels with the value the BN gives a zero input.

    That value, ``beta - mean * gamma / sqrt(var + eps)`` from the running statistics (detached, as in
    the reference), is the folded BN bias; padding with it keeps a following unpadded kxk conv equal
    to the merged ``1x1 -> kxk`` kernel at the borders.
    """

    def __init__(self, num_features: int, pad: int) -> None:
        super().__init__(num_features)
        if pad < 0:
            raise ValueError(f"pad={pad} must be >= 0")
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        p = self.pad
        if p == 0:
            return y
        with torch.no_grad():
            _, value = fold_bn(torch.zeros_like(self.running_mean), self)
        value = value.to(y.dtype).view(1, -1, 1, 1)
        y = F.pad(y, [p, p, p, p])
        y[:, :, :p, :] = value
        y[:, :, -p:, :] = value
        y[:, :, :, :p] = value
        y[:, :, :, -p:] = value
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad={self.pad}"


class IdentityConv1x1(nn.Module):
    """A grouped 1x1 conv ``c1 -> width`` whose kernel is ``identity + weight`` (weight initialised to 0).

    Output channel ``t`` starts as a copy of its group's input channel ``t mod (c1/g)``, so a width of
    ``2 * c1`` (DBB's depthwise case) starts as every input channel twice.
    """

    def __init__(self, c1: int, width: int, g: int = 1) -> None:
        super().__init__()
        check_divisible(g, c1=c1, width=width)
        ig = c1 // g
        if width % ig:
            raise ValueError(f"width={width} must be a multiple of c1/g={ig} to start as an identity")
        self.g = g
        self.weight = nn.Parameter(torch.zeros(width, ig, 1, 1))
        self.register_buffer("id_tensor", identity_kernel(width, width // ig, 1))

    def kernel(self) -> Tensor:
        """The effective 1x1 kernel ``identity + weight``, summed in fp32 (fp64 for fp64 weights).

        Why: in fp16/bf16 the 1 of the identity would swallow the small weight before folding.
        """
        dtype = work_dtype(self.weight)
        return self.weight.to(dtype) + self.id_tensor.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel().to(self.weight.dtype), None, 1, 0, 1, self.g)


@register_block("conv")
class DBB(ReparamBlock):
    """Diverse Branch Block: ``act(kxk + 1x1 + (1x1 -> avg) + (1x1 -> kxk))``, each branch with its BNs.

    The 1x1 of the 1x1 -> kxk branch starts as an identity at both widths (c1, or 2 c1 when g == c2);
    the reference initialises the 2 c1 case with PyTorch's default instead. With g == c2 and
    c1 == c2 the avg branch is the pool alone (as the reference); with g == c2 != c1, where a pool
    cannot change the channel count, it keeps its 1x1.
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
    ) -> None:
        p = check_centred_geometry(c1, c2, k, s, p, g, d, "DBB", dilation=False)
        super().__init__(c1, c2, k, s, p, g, d, resolve_act(act))
        self.dbb_origin = ConvBN(c1, c2, k, s, p, g)
        self.dbb_1x1 = ConvBN(c1, c2, 1, s, 0, g) if g < c2 else None
        self.dbb_avg = nn.Sequential()
        if g < c2 or c1 != c2:
            self.dbb_avg.add_module("conv", nn.Conv2d(c1, c2, 1, 1, 0, groups=g, bias=False))
            self.dbb_avg.add_module("bn", BNAndPad(c2, p))
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, s, 0))
        else:  # depthwise with c1 == c2: the pool alone (zero padding, counted in the mean)
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, s, p))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(c2))
        t = dbb_internal_width(c1, c2, g)
        self.dbb_1x1_kxk = nn.Sequential()
        self.dbb_1x1_kxk.add_module("idconv1", IdentityConv1x1(c1, t, g))
        self.dbb_1x1_kxk.add_module("bn1", BNAndPad(t, p))
        self.dbb_1x1_kxk.add_module("conv2", nn.Conv2d(t, c2, k, s, 0, groups=g, bias=False))
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(c2))

    def forward_train(self, x: Tensor) -> Tensor:
        y = self.dbb_origin(x) + self.dbb_avg(x) + self.dbb_1x1_kxk(x)
        if self.dbb_1x1 is not None:
            y = y + self.dbb_1x1(x)
        return y

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        k, g = self.k, self.g
        origin = self.dbb_origin.fused()
        dtype, device = origin[0].dtype, origin[0].device
        branches = [origin]
        if self.dbb_1x1 is not None:
            w1, b1 = self.dbb_1x1.fused()
            branches.append((pad_kernel(w1, k), b1))
        pool = fold_bn(avgpool_kernel(self.c2, g, k, dtype=dtype, device=device), self.dbb_avg.avgbn)
        if hasattr(self.dbb_avg, "conv"):
            first = fold_bn(self.dbb_avg.conv.weight, self.dbb_avg.bn)
            branches.append(merge_1x1_kxk(*first, *pool, groups=g))
        else:
            branches.append(pool)
        seq = self.dbb_1x1_kxk
        first = fold_bn(seq.idconv1.kernel(), seq.bn1)
        second = fold_bn(seq.conv2.weight, seq.bn2)
        branches.append(merge_1x1_kxk(*first, *second, groups=g))
        return add_branches(*branches)
