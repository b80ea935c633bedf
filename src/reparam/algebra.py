"""Kernel algebra: the pure tensor transforms every re-parameterizable block is built from.

Each function takes and returns plain tensors (kernels shaped ``(O, I/g, kh, kw)`` and biases shaped
``(O,)``), is differentiable, and computes in at least fp32 (fp64 stays fp64), returning the widest
dtype of its inputs so that fp16 weights are folded without losing precision in between.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "add_branches",
    "avgpool_kernel",
    "bias_or_zeros",
    "compose_sequential",
    "fold_bn",
    "fold_bn_tensors",
    "identity_kernel",
    "merge_1x1_kxk",
    "no_autocast",
    "pad_kernel",
    "padding_for_branch",
    "work_dtype",
]


def work_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The dtype to compute in: the widest floating dtype of the inputs, never narrower than fp32."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def no_autocast(ref: Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``ref``'s device, so the algebra runs in the dtype it is given.

    Why: autocast would run the convs and GEMMs below in fp16/bf16 even on fp32 kernels. Outside
    autocast it is a no-op context (entering ``torch.autocast`` costs microseconds per call).
    """
    device = ref.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def bias_or_zeros(bias: Tensor | None, channels: int, like: Tensor) -> Tensor:
    """A conv's bias, or zeros of the right length when the conv has none."""
    if bias is not None:
        return bias
    return torch.zeros(channels, dtype=like.dtype, device=like.device)


def fold_bn_tensors(
    weight: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Fold eval-mode BN statistics into the conv before it: ``W' = W t``, ``b' = beta + (b - mean) t``.

    ``t = gamma / sqrt(var + eps)``; a missing conv bias counts as zero and a non-affine BN as
    ``gamma = 1, beta = 0``. Works on kernels of any rank whose first dimension is the output channel.
    """
    dtype = work_dtype(weight, bias, running_mean, running_var, gamma, beta)
    out = weight.shape[0]
    if running_mean.shape[0] != out:
        raise ValueError(
            f"fold_bn: BN has {running_mean.shape[0]} channels but the kernel has {out} output channels"
        )
    std = (running_var.to(dtype) + eps).sqrt()
    g = gamma.to(dtype) if gamma is not None else torch.ones_like(std)
    b0 = beta.to(dtype) if beta is not None else torch.zeros_like(std)
    t = g / std
    w = weight.to(dtype) * t.reshape(-1, *([1] * (weight.dim() - 1)))
    b = bias_or_zeros(bias, out, std).to(dtype)
    return w, b0 + (b - running_mean.to(dtype)) * t


def fold_bn(weight: Tensor, bn: nn.BatchNorm2d, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fold a BatchNorm module (its running statistics and its own eps) into the preceding kernel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: bn must track running statistics (track_running_stats=True)")
    return fold_bn_tensors(weight, bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def add_branches(*branches: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Sum parallel branches of equal kernel shape: kernels add and biases add."""
    if not branches:
        raise ValueError("add_branches: at least one (kernel, bias) branch is required")
    dtype = work_dtype(*(t for pair in branches for t in pair))
    shape = branches[0][0].shape
    for w, _ in branches[1:]:
        if w.shape != shape:
            raise ValueError(
                f"add_branches: kernel shapes differ ({tuple(shape)} vs {tuple(w.shape)}); pad first"
            )
    weight = sum(w.to(dtype) for w, _ in branches)
    bias = sum(b.to(dtype) for _, b in branches)
    return weight, bias


def padding_for_branch(padding: int, big: int, small: int, dilation: int = 1) -> int:
    """Padding a ``small`` kernel branch needs to align with a ``big`` kernel using ``padding``.

    Raises ValueError when the central embedding is not exact: ``big - small`` must be even and the
    resulting padding non-negative.
    """
    if (big - small) % 2:
        raise ValueError(f"kernel size {small} cannot be centred in {big}: (K - k) must be even")
    offset = dilation * (big - small) // 2
    if padding < offset:
        raise ValueError(f"padding {padding} is too small to align a {small}x{small} branch with {big}x{big}")
    return padding - offset


def pad_kernel(kernel: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Zero-pad a smaller kernel centrally to ``size`` (legal only when the size difference is even)."""
    kh, kw = (size, size) if isinstance(size, int) else size
    h, w = kernel.shape[-2:]
    if kh < h or kw < w:
        raise ValueError(f"pad_kernel: target size {(kh, kw)} is smaller than the kernel {(h, w)}")
    if (kh - h) % 2 or (kw - w) % 2:
        raise ValueError(f"pad_kernel: {(h, w)} cannot be centred in {(kh, kw)}: (K - k) must be even")
    ph, pw = (kh - h) // 2, (kw - w) // 2
    return F.pad(kernel, [pw, pw, ph, ph])


def identity_kernel(
    channels: int,
    groups: int = 1,
    kernel_size: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The kernel of ``x -> x`` as a grouped conv: ``K[i, i mod (C/g), centre] = 1``."""
    if channels % groups:
        raise ValueError(f"identity_kernel: channels={channels} must be divisible by groups={groups}")
    if kernel_size % 2 == 0:
        raise ValueError(f"identity_kernel: kernel_size={kernel_size} must be odd to have a centre")
    ig = channels // groups
    k = torch.zeros(channels, ig, kernel_size, kernel_size, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    k[idx, idx % ig, kernel_size // 2, kernel_size // 2] = 1.0
    return k


def avgpool_kernel(
    channels: int,
    groups: int,
    kernel_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The kernel of a per-channel k x k average pool (zero padding, count_include_pad=True)."""
    if channels % groups:
        raise ValueError(f"avgpool_kernel: channels={channels} must be divisible by groups={groups}")
    ig = channels // groups
    k = torch.zeros(channels, ig, kernel_size, kernel_size, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    k[idx, idx % ig] = 1.0 / kernel_size**2
    return k


def merge_1x1_kxk(
    k1: Tensor, b1: Tensor | None, k2: Tensor, b2: Tensor | None, groups: int = 1
) -> tuple[Tensor, Tensor]:
    """Merge a 1x1 conv ``(D, I/g)`` followed by a kxk conv ``(E, D/g, k, k)`` into one kxk conv.

    ``K = conv2d(K2, K1^T)`` per group and ``b = sum K2 * b1 + b2``. Exact at borders only when the
    intermediate map is padded with ``b1`` rather than zeros (DBB's BN-and-pad layer).
    """
    dtype = work_dtype(k1, b1, k2, b2)
    k1, k2 = k1.to(dtype), k2.to(dtype)
    d, e = k1.shape[0], k2.shape[0]
    if k1.shape[-2:] != (1, 1):
        raise ValueError(f"merge_1x1_kxk: first kernel must be 1x1, got {tuple(k1.shape[-2:])}")
    if k2.shape[1] * groups != d:
        raise ValueError(
            f"merge_1x1_kxk: second kernel expects {k2.shape[1] * groups} channels, first gives {d}"
        )
    dg, eg = d // groups, e // groups
    kernels = []
    b1 = bias_or_zeros(b1, d, k1).to(dtype)
    b2 = bias_or_zeros(b2, e, k2).to(dtype)
    with no_autocast(k1):
        for gi in range(groups):
            k1g = k1[gi * dg : (gi + 1) * dg].permute(1, 0, 2, 3)  # (I/g, D/g, 1, 1)
            k2g = k2[gi * eg : (gi + 1) * eg]  # (E/g, D/g, k, k)
            kernels.append(F.conv2d(k2g, k1g))
        b1_per_out = b1.reshape(groups, dg)
        k2_sum = k2.sum(dim=(2, 3)).reshape(groups, eg, dg)
        bias = torch.einsum("ged,gd->ge", k2_sum, b1_per_out).reshape(e) + b2
    return torch.cat(kernels, dim=0), bias


def compose_sequential(first: Tensor, second: Tensor) -> Tensor:
    """Kernel of ``conv(conv(x, first), second)`` without padding: one ``(k1 + k2 - 1)`` kernel.

    ``first`` is ``(D, I, k1, k1)``, ``second`` ``(E, D, k2, k2)`` (groups=1). conv2d is a
    cross-correlation, so the composition correlates ``first`` with the flipped ``second``. Only valid
    interior-exact: a stack of *padded* convs differs at borders, so train and deploy must both use the
    composed kernel.
    """
    dtype = work_dtype(first, second)
    first, second = first.to(dtype), second.to(dtype)
    if second.shape[1] != first.shape[0]:
        raise ValueError(
            f"compose_sequential: second kernel expects {second.shape[1]} channels, first gives "
            f"{first.shape[0]}"
        )
    k2 = second.shape[-1]
    # out[e, i] = sum_d full_corr(first[d, i], second[e, d]); computed as one conv over I as batch.
    x = first.permute(1, 0, 2, 3)  # (I, D, k1, k1)
    with no_autocast(x):
        y = F.conv2d(x, second.flip(-1, -2), padding=k2 - 1)  # (I, E, k1 + k2 - 1, ...)
    return y.permute(1, 0, 2, 3).contiguous()
