"""Function-preserving starts: each family's block built from one trained Conv2d(+BN).

The origin (kxk) branch takes the trained kernel and BN exactly; every other branch starts contributing
zero in eval mode without being dead: a zero BN gamma or a zero branch scale multiplies a nonzero branch,
so the zero factor gets gradient at once and the rest of the branch from the first optimizer step on. In
training mode the adopted block also starts as the trained one (the extra branches output their zero
beta, and the origin BN sees the same batch; QARepVGG up to its BN eps), except for bare convs, whose
new BN normalises batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reparam.adoption.units import Unit, geometry
from reparam.algebra import identity_kernel
from reparam.blocks.dbb import DBB
from reparam.blocks.dynamic import DynamicConvBNAct
from reparam.blocks.orepa import create_orepa
from reparam.blocks.repvgg import QARepVGGBlock, RepVGGBlock

__all__ = ["EXPERTS", "EXPERT_SPREAD", "build_block"]

EXPERTS = 4  # DynamicConv experts of an adopted layer (ParameterNet's default)
EXPERT_SPREAD = 0.1  # relative size of the zero-mean offsets that make the experts differ (see _dynamic)


@dataclass
class _Norm:
    """The eval-mode affine map after the conv: ``gamma * (y - mean) / sqrt(var + eps) + beta``."""

    mean: Tensor
    var: Tensor
    gamma: Tensor
    beta: Tensor
    eps: float
    momentum: float | None
    batches: Tensor | None

    @torch.no_grad()
    def load(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        """Make ``bn`` this map (running statistics, affine, eps, momentum)."""
        bn.running_mean.copy_(self.mean)
        bn.running_var.copy_(self.var)
        bn.weight.copy_(self.gamma)
        bn.bias.copy_(self.beta)
        if self.batches is not None and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.copy_(self.batches)
        bn.eps, bn.momentum = self.eps, self.momentum


def _trained_norm(unit: Unit) -> tuple[_Norm, int]:
    """The unit's BN (conv bias folded into its mean), or an identity map carrying the bias; tensors read."""
    conv, bn = unit.conv, unit.bn
    w = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(w[:, 0, 0, 0])
    read = 1 + (conv.bias is not None)
    if bn is None:
        return _identity_norm(conv.out_channels, bias, 1e-5, 0.1, w), read
    ones = torch.ones_like(bn.running_mean)
    gamma = bn.weight.detach() if bn.weight is not None else ones
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(ones)
    mean = bn.running_mean - bias.to(bn.running_mean) if conv.bias is not None else bn.running_mean
    read += sum(t is not None for t in (bn.weight, bn.bias, bn.num_batches_tracked)) + 2
    return _Norm(mean, bn.running_var, gamma, beta, bn.eps, bn.momentum, bn.num_batches_tracked), read


def _identity_norm(c: int, beta: Tensor, eps: float, momentum: float | None, like: Tensor) -> _Norm:
    """``y -> y + beta`` as a BN map: mean 0, var 1, gamma sqrt(1 + eps) (exact up to one rounding)."""
    gamma = torch.full((c,), math.sqrt(1.0 + eps), dtype=torch.float64).to(like)
    return _Norm(torch.zeros_like(gamma), torch.ones_like(gamma), gamma, beta.to(like), eps, momentum, None)


@torch.no_grad()
def _silence(*bns: nn.modules.batchnorm._BatchNorm | None) -> None:
    """Extra branches' BNs output exactly zero in eval mode: gamma 0 (still trainable), beta 0."""
    for bn in bns:
        if bn is not None:
            bn.weight.zero_()
            bn.bias.zero_()


@torch.no_grad()
def _origin(branch: nn.Module, unit: Unit, norm: _Norm) -> None:
    """A conv + BN branch (``conv``, ``bn``) takes the trained kernel and BN."""
    branch.conv.weight.copy_(unit.conv.weight)
    norm.load(branch.bn)


def _match_bns(block: nn.Module, norm: _Norm) -> None:
    """Every BN of the block uses the trained BN's eps and momentum (e.g. Ultralytics' 1e-3 and 0.03)."""
    for m in block.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps, m.momentum = norm.eps, norm.momentum


def _new(
    factory: Callable[..., nn.Module],
    unit: Unit,
    geo: dict[str, int],
    act: nn.Module,
    norm: _Norm,
    **kwargs: int,
) -> nn.Module:
    """The block, on the conv's device and in its dtype before any weight is copied in."""
    w = unit.conv.weight
    block = factory(**geo, act=act, **kwargs).to(device=w.device, dtype=w.dtype)
    _match_bns(block, norm)
    return block


@torch.no_grad()
def _repvgg(unit: Unit, geo: dict[str, int], act: nn.Module, norm: _Norm) -> nn.Module:
    block = _new(RepVGGBlock, unit, geo, act, norm)
    _origin(block.rbr_dense, unit, norm)
    _silence(block.rbr_1x1.bn if block.rbr_1x1 is not None else None, block.rbr_identity)
    return block


@torch.no_grad()
def _qarepvgg(unit: Unit, geo: dict[str, int], act: nn.Module, norm: _Norm) -> nn.Module:
    """Post-BN <- the trained BN, kxk BN <- identity map; the 1x1 starts as ``-identity`` to cancel the
    parameter-free identity branch (zeros when there is none). Batch-normalising an affine image of the
    kxk output gives nearly the same result, so training mode starts as the trained layer up to the eps."""
    block = _new(QARepVGGBlock, unit, geo, act, norm)
    w = unit.conv.weight
    block.rbr_dense.conv.weight.copy_(w)
    _identity_norm(geo["c2"], torch.zeros_like(norm.beta), norm.eps, norm.momentum, w).load(
        block.rbr_dense.bn
    )
    norm.load(block.bn)
    if block.rbr_1x1 is not None:
        block.rbr_1x1.weight.zero_()
        if block.has_identity:
            block.rbr_1x1.weight.sub_(identity_kernel(geo["c1"], geo["g"], 1, dtype=w.dtype, device=w.device))
    return block


@torch.no_grad()
def _dbb(unit: Unit, geo: dict[str, int], act: nn.Module, norm: _Norm) -> nn.Module:
    block = _new(DBB, unit, geo, act, norm)
    _origin(block.dbb_origin, unit, norm)
    one = block.dbb_1x1.bn if block.dbb_1x1 is not None else None
    _silence(block.dbb_avg.avgbn, block.dbb_1x1_kxk.bn2, one)
    return block


@torch.no_grad()
def _orepa(unit: Unit, geo: dict[str, int], act: nn.Module, norm: _Norm) -> nn.Module:
    """Scale vector row 0 (origin) = 1 holding the trained kernel, other rows 0 (their branches stay
    random and nonzero, so the scales get gradient); the one BN <- the trained BN."""
    block = _new(create_orepa, unit, geo, act, norm)
    params = block.gen if hasattr(block, "gen") else block  # OREPA (k >= 3) / OREPA_1x1
    params.weight_origin.copy_(unit.conv.weight.detach())
    params.vector.zero_()
    params.vector[0].fill_(1.0)
    norm.load(block.bn)
    return block


@torch.no_grad()
def _dynamic(unit: Unit, geo: dict[str, int], act: nn.Module, norm: _Norm) -> nn.Module:
    """Router weight 0 and bias logit(1/E), so every gate is 1/E; expert e = W + D_e with sum_e D_e = 0,
    so the aggregated kernel is exactly W for every input. The offsets D_e (zero-mean over experts, RMS
    ``EXPERT_SPREAD`` times W's) break the symmetry: identical experts would get identical updates forever."""
    block = _new(DynamicConvBNAct, unit, geo, act, norm, num_experts=EXPERTS)
    dc = block.conv
    w = unit.conv.weight.detach().to(torch.float64).reshape(1, *dc.weight.shape[1:])
    gen = torch.Generator().manual_seed(0)
    offsets = torch.randn(dc.weight.shape, generator=gen, dtype=torch.float64)
    offsets -= offsets.mean(0, keepdim=True)
    scale = EXPERT_SPREAD * float(w.pow(2).mean().sqrt()) / max(float(offsets.pow(2).mean().sqrt()), 1e-30)
    dc.weight.copy_(w + offsets * scale)
    dc.routing_weight.zero_()
    dc.routing_bias.fill_(-math.log(EXPERTS - 1))  # sigmoid(-log(E - 1)) = 1/E
    norm.load(block.bn)
    return block


_BUILDERS: dict[str, Callable[[Unit, dict[str, int], nn.Module, _Norm], nn.Module]] = {
    "repvgg": _repvgg,
    "qarepvgg": _qarepvgg,
    "dbb": _dbb,
    "orepa": _orepa,
    "dynamic": _dynamic,
}


def build_block(unit: Unit, to: str) -> tuple[nn.Module, int]:
    """The ``to`` block equal to ``unit`` in eval mode (activation included), and the tensors it took over.

    The caller has checked :func:`reparam.adoption.units.unsupported`.
    """
    geo, why = geometry(unit.conv)
    if geo is None:
        raise ValueError(f"{unit.name}: {why}")
    norm, read = _trained_norm(unit)
    act = unit.act if unit.act is not None else nn.Identity()
    block = _BUILDERS[to](unit, geo, act, norm)
    block.train(unit.module.training)
    return block, read
