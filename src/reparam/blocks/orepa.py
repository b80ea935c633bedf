"""OREPA: Online Convolutional Re-parameterization (CVPR 2022, arXiv 2204.00826).

The branches are squeezed into one kernel *before* touching the feature map: every training forward
regenerates the kxk kernel from the branch parameters (linear, no BN or activation inside a branch)
and runs ONE convolution followed by ONE BN. Deploy folds that BN into the generated kernel.

Branch set and widths follow the reference implementation (JUGGHM/OREPA_CVPR2022, ``blocks.py``), so
parameter counts match it. The generator is engineered for CPU training speed: fixed filters are
buffers, no branch is run as a convolution, every branch is accumulated in place into one buffer (the
1x1 -> kxk product as one GEMM per group), and a hand-written backward saves the parameters and one
kernel-sized product and computes each gradient with one GEMM, one scaled copy or one small trace.
Generation (and conversion) runs in fp32 with autocast off, fp16/bf16 parameters promoted; the conv
gets the kernel in its compute dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from reparam.algebra import (
    add_branches,
    compose_sequential,
    fold_bn,
    identity_kernel,
    no_autocast,
    pad_kernel,
    padding_for_branch,
    work_dtype,
)
from reparam.blocks.act import Act, resolve_act
from reparam.blocks.base import (
    ReparamBlock,
    check_centred_geometry,
    check_divisible,
    check_positive,
)
from reparam.blocks.convbn import ConvBN
from reparam.blocks.registry import register_block
from reparam.checks import strict_bools

__all__ = [
    "OREPA",
    "OREPAKernel",
    "OREPARepVGG",
    "OREPA_1x1",
    "OREPA_LargeConv",
    "create_orepa",
    "frequency_prior",
    "orepa_internal_width",
]

INIT_HYPER_PARA = 0.2
"""Default ``init_hyper_para`` of :class:`OREPA`: the reference code's option, every branch's initial kernel
times it (the reference default is 1.0). Why 0.2: a BN follows the conv, so only the kernel's direction
matters, and OREPA's reference init (3.3x ``nn.Conv2d``'s kernel std) turns that direction ~3.4x slower
per step than a plain conv's at one learning rate; at 0.2 OREPA trains about as well as a plain conv under
the plain conv's own recipe (README "OREPA as a drop-in", docs/evidence/orepa-default.csv). Loading weights
(``load_weights``, checkpoints) replaces the init, so official layouts load and convert as before."""

EXPAND = 8  # depthwise expansion of the linear depthwise-separable branch (reference: expand_ratio)


def orepa_internal_width(c1: int, g: int) -> int:
    """Width T of the 1x1 -> kxk branch: ``c1`` if ``g <= 4`` else ``2 * c1`` (reference rule)."""
    return c1 if g <= 4 else 2 * c1


def frequency_prior(channels: int, k: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The fixed DCT-II filters of OREPA's prior branch, shape ``(channels, k, k)``.

    Channel ``i`` of the first ``ceil(channels / 2)`` varies along rows, the rest along columns, with
    ``cos(pi (h + 1/2) f / k)``. The frequency ``f`` wraps to ``1 .. k-1`` (the reference hard-codes
    k = 3 and lets ``f`` run on, which gives zero filters), so no channel gets a zero or constant filter.
    """
    check_positive(channels=channels, k=k)
    if k < 3 or k % 2 == 0:
        raise ValueError(f"frequency_prior: k={k} must be odd and >= 3 (k = 1 has no non-constant filter)")
    half = (channels + 1) // 2
    i = torch.arange(channels, dtype=torch.float64)
    f = torch.where(i < half, i, i - half).remainder(k - 1) + 1
    h = torch.arange(k, dtype=torch.float64) + 0.5
    wave = torch.cos(math.pi * f[:, None] * h[None, :] / k)  # (channels, k)
    rows = wave[:, :, None].expand(channels, k, k)  # varies with h
    cols = wave[:, None, :].expand(channels, k, k)  # varies with w
    return torch.where((i < half)[:, None, None], rows, cols).to(dtype).contiguous()


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, without a dispatch when it already is (the common fp32 training path)."""
    return t if t.dtype == dtype else t.to(dtype)


def _compute_dtype(ref: Tensor) -> torch.dtype:
    """The dtype a conv on ``ref`` computes in: the autocast dtype under autocast, else ``ref``'s own.

    Autocast leaves fp64 tensors alone, so an fp64 ``ref`` keeps fp64 even inside an autocast region.
    """
    device = ref.device.type
    available = ref.dtype != torch.float64 and torch.amp.is_autocast_available(device)
    if available and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return ref.dtype


@strict_bools
class OREPAKernel(nn.Module):
    """The six-branch kernel generator of OREPA (no conv, no BN): ``forward()`` returns ``(O, I/g, k, k)``.

    Branches (rows of ``vector``, each a per-output-channel scale): 0 origin kxk; 1 1x1 times a k x k
    mean filter; 2 1x1 times a fixed DCT filter; 3 (identity + delta) 1x1 -> kxk of width T; 4 1x1
    (centred; omitted with ``branch_1x1=False`` as in the RepVGG-style variant, whose block has its own
    1x1); 5 linear depthwise (8 I) -> pointwise. Not a block on its own: OREPA, OREPARepVGG and
    OREPA_LargeConv wrap it.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 3,
        g: int = 1,
        branch_1x1: bool = True,
        *,
        init_hyper_para: float = 1.0,
        init_hyper_gamma: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, k=k, g=g)
        for name, value in (("init_hyper_para", init_hyper_para), ("init_hyper_gamma", init_hyper_gamma)):
            if isinstance(value, bool) or not (
                isinstance(value, int | float) and math.isfinite(value) and value > 0
            ):
                raise ValueError(f"OREPAKernel: {name} must be a finite number > 0, got {value!r}")
        check_divisible(g, c1=c1, c2=c2)
        if k < 3 or k % 2 == 0:
            raise ValueError(f"OREPAKernel: kernel size k={k} must be odd and >= 3 (k = 1: use OREPA_1x1)")
        self.c1, self.c2, self.k, self.g = c1, c2, k, g
        ig = c1 // g
        t = orepa_internal_width(c1, g)
        self.t = t
        self.weight_origin = nn.Parameter(torch.empty(c2, ig, k, k))
        self.weight_avg = nn.Parameter(torch.empty(c2, ig, 1, 1))
        self.weight_prior = nn.Parameter(torch.empty(c2, ig, 1, 1))
        self.weight_1x1 = nn.Parameter(torch.empty(c2, ig, 1, 1)) if branch_1x1 else None
        self.weight_1x1_kxk_idconv1 = nn.Parameter(torch.zeros(t, ig, 1, 1))
        self.weight_1x1_kxk_conv2 = nn.Parameter(torch.empty(c2, t // g, k, k))
        self.weight_dw = nn.Parameter(torch.empty(EXPAND * c1, 1, k, k))
        self.weight_pw = nn.Parameter(torch.empty(c2, EXPAND * c1 // g, 1, 1))
        for w in (
            self.weight_origin,
            self.weight_avg,
            self.weight_prior,
            self.weight_1x1,
            self.weight_1x1_kxk_conv2,
            self.weight_dw,
            self.weight_pw,
        ):
            if w is not None:
                nn.init.kaiming_uniform_(w, a=0.0)
        # Row order as in the paper: origin, avg, prior, 1x1->kxk, [1x1], depthwise-separable.
        init = [0.25, 0.25, 0.0, 0.5] + ([1.0] if branch_1x1 else []) + [0.5]
        self.vector = nn.Parameter(torch.tensor(init)[:, None].repeat(1, c2) * math.sqrt(init_hyper_gamma))
        with torch.no_grad():  # the reference's scaling: every branch's kernel times init_hyper_para
            for w in (self.weight_origin, self.weight_avg, self.weight_prior, self.weight_1x1):
                if w is not None:
                    w.mul_(init_hyper_para)
            self.weight_1x1_kxk_conv2.mul_(init_hyper_para)
            self.weight_dw.mul_(math.sqrt(init_hyper_para))
            self.weight_pw.mul_(math.sqrt(init_hyper_para))
        # Fixed k x k filters that the 1x1 factors multiply: mean filter, DCT prior, [centre tap].
        fixed = [torch.full((c2, k, k), 1.0 / k**2), frequency_prior(c2, k)]
        if branch_1x1:
            fixed.append(pad_kernel(torch.ones(c2, 1, 1), k))
        self.register_buffer("fixed_filters", torch.stack(fixed).view(len(fixed), c2, k * k, 1))
        self.register_buffer("id_tensor", identity_kernel(t, t // ig, 1).flatten(1))  # (T, I/g)
        # (O, g, k, T, I/g, rows of the fixed-filter branches, row of 1x1->kxk, row of depthwise-separable)
        self._geom = (c2, g, k, t, ig, (1, 2, 4) if branch_1x1 else (1, 2), 3, 5 if branch_1x1 else 4)

    def generate(self) -> Tensor:
        """The merged ``(O, I/g, k, k)`` kernel (differentiable), computed in fp32 with autocast off.

        fp64 parameters give an fp64 kernel; fp16/bf16 ones are promoted to fp32 (autograd casts their
        gradients back), so the sums of many small branch products never round in half precision.
        """
        tensors = [
            self.vector,
            self.weight_origin,
            self.weight_1x1_kxk_idconv1,
            self.weight_1x1_kxk_conv2,
            self.weight_dw,
            self.weight_pw,
            self.fixed_filters,
            self.id_tensor,
            self.weight_avg,
            self.weight_prior,
        ]
        if self.weight_1x1 is not None:
            tensors.append(self.weight_1x1)
        dtype = work_dtype(*tensors)
        with no_autocast(self.vector):
            return _GenerateKernel.apply(self._geom, *(_cast(t, dtype) for t in tensors))

    def forward(self) -> Tensor:
        """The kernel of :meth:`generate` in the conv's compute dtype (the autocast or parameter dtype)."""
        return _cast(self.generate(), _compute_dtype(self.weight_origin))


def _scaled_transpose(x: Tensor, scale: Tensor) -> Tensor:
    """A new ``(n, b, a)`` contiguous copy of ``x`` ``(n, a, b)``, row ``j`` times ``scale[j]`` (ATen's
    blocked transpose copy, then an in-place scale: faster than one strided multiply; never ``x`` itself)."""
    return x.transpose(1, 2).clone(memory_format=torch.contiguous_format).mul_(scale.view(-1, 1, 1))


def _rows(vector: Tensor, rows: tuple[int, ...]) -> Tensor:
    """``vector[list(rows)]`` as slices and one cat (indexing with a list costs a host tensor per call)."""
    return torch.cat([vector[r : r + 1] for r in rows])


class _GenerateKernel(torch.autograd.Function):
    """OREPA's kernel generation with a hand-written backward.

    Why: autograd of the same expression keeps kernel-sized temporaries alive for backward and spends
    most of its time in broadcast products and layout copies. Here every pass over a kernel-sized tensor
    does several jobs at once: forward runs the 1x1 -> kxk contraction as one GEMM per group in
    ``(O, k*k, I/g)`` order, adds the fixed-filter branches with one batched GEMM and the depthwise-
    separable one with one strided pass, and writes the result in ``(O, I/g, k, k)`` order while adding
    the origin branch. Saved: the parameters, forward's scaled, transposed conv2 (one kernel-sized
    tensor) and its stacked 1x1 factors. Backward derives each gradient with one GEMM or one scaled copy,
    and each scale's gradient as the trace of a (k*k, k*k) or (8, 8) product instead of a kernel-sized
    product and sum.
    """

    @staticmethod
    def forward(
        ctx: Any,
        geom: tuple,
        vector: Tensor,
        w0: Tensor,
        delta: Tensor,
        c2w: Tensor,
        dw: Tensor,
        pw: Tensor,
        fixed: Tensor,
        ident: Tensor,
        *factors: Tensor,
    ) -> Tensor:
        o, g, k, t, ig, fixed_rows, r3, r5 = geom
        og, tg, kk, nf = o // g, t // g, k * k, len(fixed_rows)
        # 3: (identity + delta) 1x1 -> kxk: conv2 scaled into (O, kk, T/g) order, one GEMM per group.
        c1 = (delta.view(t, ig) + ident).view(g, tg, ig)
        c2t = _scaled_transpose(c2w.view(o, tg, kk), vector[r3])
        acc = torch.bmm(c2t.view(g, og * kk, tg), c1).view(o, kk, ig)
        # 1, 2, (4): per output channel, (kk, nf) scaled fixed filters times (nf, I/g) factors.
        fac = torch.stack([f.view(o, ig) for f in factors], 1)  # (O, nf, I/g)
        filt = fixed.view(nf, o, kk) * _rows(vector, fixed_rows).view(nf, o, 1)
        acc.baddbmm_(filt.permute(1, 2, 0), fac)
        # 5: depthwise (8 per input channel) -> pointwise: a GEMM per input channel, batched, reading the
        # pointwise weight in place (each input channel's (O/g, 8) block is a strided matrix).
        k5 = torch.matmul(pw.view(g, og, ig, EXPAND).transpose(1, 2), dw.view(g, ig, EXPAND, kk))
        acc.view(g, og, kk, ig).addcmul_(k5.permute(0, 2, 3, 1), vector[r5].view(g, og, 1, 1))
        # 0: origin, added to the kernel in (O, I/g, k, k) order (a blocked transpose copy of acc).
        out = acc.transpose(1, 2).contiguous().addcmul_(w0.view(o, ig, kk), vector[0].view(o, 1, 1))
        ctx.geom, ctx.factor_shapes = geom, [f.shape for f in factors]
        ctx.save_for_backward(vector, w0, delta, c2w, dw, pw, fixed, ident, c2t, fac)
        return out.view(w0.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        with no_autocast(grad):  # backward() may be called inside an autocast region
            return _GenerateKernel.gradients(ctx, grad)

    @staticmethod
    def gradients(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        """Gradients of every input, in the dtype forward received (the generator's work dtype)."""
        o, g, k, t, ig, fixed_rows, r3, r5 = ctx.geom
        og, tg, kk, nf = o // g, t // g, k * k, len(fixed_rows)
        vector, w0, delta, c2w, dw, pw, fixed, ident, c2t, fac = ctx.saved_tensors
        gk = grad.contiguous().view(o, ig, kk)
        gt = gk.transpose(1, 2).contiguous()  # (O, kk, I/g): the GEMM order of branches 1-4
        gvec: dict[int, Tensor] = {}  # row r: the gradient of vector[r], stacked at the end
        # 0: origin; its scale's gradient as the trace of grad[o]^T w0[o], a (k*k, k*k) product.
        g_w0 = (gk * vector[0].view(o, 1, 1)).view(w0.shape)
        gvec[0] = torch.bmm(gt, w0.view(o, ig, kk)).diagonal(dim1=1, dim2=2).sum(1)
        # 1, 2, (4): h[o, b, i] = sum_s filter_b[o, s] grad[o, i, s], one batched GEMM.
        h = torch.bmm(fixed.view(nf, o, kk).transpose(0, 1), gt)  # (O, nf, I/g)
        g_fac = torch.mul(
            h.transpose(0, 1), _rows(vector, fixed_rows).view(nf, o, 1), out=fac.new_empty(nf, o, ig)
        )
        for r, g_r in zip(fixed_rows, (h * fac).sum(2).t(), strict=True):
            gvec[r] = g_r
        g_factors = [g_fac[b].view(f_shape) for b, f_shape in enumerate(ctx.factor_shapes)]
        # 3: r[o, s, t] = sum_i grad[o, i, s] c1[t, i]; grads of conv2, of its scale (the trace of
        # r[o] @ conv2[o], a (k*k, k*k) product), and of delta (with forward's scaled conv2).
        c1 = (delta.view(t, ig) + ident).view(g, tg, ig)
        r = torch.bmm(gt.view(g, og * kk, ig), c1.transpose(1, 2)).view(o, kk, tg)
        g_c2 = _scaled_transpose(r, vector[r3]).view(c2w.shape)
        gvec[r3] = torch.bmm(r, c2w.view(o, tg, kk)).diagonal(dim1=1, dim2=2).sum(1)
        g_delta = torch.bmm(c2t.view(g, og * kk, tg).transpose(1, 2), gt.view(g, og * kk, ig))
        # 5: q[i, o, e] = sum_s grad[o, i, s] dw[i, e, s], reading grad in place; grads of pointwise, of
        # its scale (the trace of q[o]^T pw[o], an (8, 8) product) and of depthwise.
        gb = gk.view(g, og, ig, kk).transpose(1, 2)  # (g, I/g, O/g, kk) view
        q = torch.matmul(gb, dw.view(g, ig, EXPAND, kk).transpose(2, 3)).transpose(1, 2)  # (g, O/g, I/g, 8)
        v5 = vector[r5].view(g, og, 1, 1)
        pw4 = pw.view(g, og, ig, EXPAND)
        gvec[r5] = torch.matmul(q.transpose(2, 3), pw4).diagonal(dim1=2, dim2=3).sum(2).view(o)
        g_pw = q.contiguous().mul_(v5).view(pw.shape)  # last use of q (contiguous() may return q itself)
        g_dw = torch.matmul((pw4 * v5).permute(0, 2, 3, 1), gb).reshape(dw.shape)
        g_vec = torch.stack([gvec[r] for r in range(len(gvec))])
        return (None, g_vec, g_w0, g_delta.reshape(delta.shape), g_c2, g_dw, g_pw, None, None, *g_factors)


@strict_bools
def create_orepa(
    c1: int,
    c2: int,
    k: int = 3,
    s: int = 1,
    p: int | None = None,
    g: int = 1,
    d: int = 1,
    act: Act = True,
    large: bool = False,
) -> nn.Module:
    """The OREPA block for a kernel size: :class:`OREPA_1x1` for k = 1, :class:`OREPA_LargeConv` with
    ``large=True`` (k >= 5), else :class:`OREPA`. The registry builds the YAML name "OREPA" with it.
    """
    if k == 1:
        if large:
            raise ValueError("large=True needs a kernel size k >= 5, got k=1")
        return OREPA_1x1(c1, c2, k, s, p, g, d, act)
    if large:
        return OREPA_LargeConv(c1, c2, k, s, p, g, d, act)
    return OREPA(c1, c2, k, s, p, g, d, act)


@strict_bools
@register_block("conv", build=create_orepa)
class OREPA(ReparamBlock):
    """``act(BN(conv(x, K)))`` with ``K`` regenerated from six linear branches at every training forward.

    For k = 1 use :class:`OREPA_1x1`, for a deep-stem large kernel :class:`OREPA_LargeConv`, or let
    :func:`create_orepa` (and the YAML name "OREPA", which builds through it) pick. ``large`` exists only
    to point a ``large=True`` caller there. ``init_hyper_para`` (default :data:`INIT_HYPER_PARA`, 0.2) and
    ``init_hyper_gamma`` are the reference's init options; 1.0 and 1.0 give the reference init.
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
        large: bool = False,
        *,
        init_hyper_para: float = INIT_HYPER_PARA,
        init_hyper_gamma: float = 1.0,
    ) -> None:
        if large is not False or k == 1:
            which = "OREPA_LargeConv" if large is not False else "OREPA_1x1"
            raise ValueError(
                f"OREPA(c1, c2, k={k}, large={large!r}) is an {which}: build {which}(...) directly, or "
                "reparam.blocks.create_orepa(...) / create_block('OREPA', ...), which pick the class"
            )
        p = check_centred_geometry(c1, c2, k, s, p, g, d, "OREPA", dilation=False)
        super().__init__(c1, c2, k, s, p, g, d, resolve_act(act))
        hyper = {"init_hyper_para": init_hyper_para, "init_hyper_gamma": init_hyper_gamma}
        self.gen = OREPAKernel(c1, c2, k, g, **hyper)
        self.bn = nn.BatchNorm2d(c2)

    def forward_train(self, x: Tensor) -> Tensor:
        return self.bn(F.conv2d(x, self.gen(), None, self.s, self.p, 1, self.g))

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        return fold_bn(self.gen.generate(), self.bn)


@register_block("conv")
class OREPA_1x1(ReparamBlock):
    """OREPA for k = 1: ``act(BN(conv(x, v0 W + v1 (W2 W1))))``, one conv and one BN.

    As in the reference, the second term is a product of two 1x1 factors through width
    ``T = min(c1, c2)``, the square factor identity-initialised, scales initialised to ``[1.0, 0.5]``
    and weights kaiming-uniform with ``a = 1``. Groups are supported per group.
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
        p = check_centred_geometry(c1, c2, k, s, p, g, d, "OREPA", dilation=False)
        if k != 1:
            raise ValueError(f"OREPA_1x1 needs kernel size k=1, got k={k} (use OREPA)")
        super().__init__(c1, c2, k, s, p, g, d, resolve_act(act))
        ig, t = c1 // g, min(c1, c2)
        self.t = t
        self.weight_origin = nn.Parameter(torch.empty(c2, ig, 1, 1))
        nn.init.kaiming_uniform_(self.weight_origin, a=1.0)
        if c2 > c1:
            self.weight_l2i_conv1 = nn.Parameter(identity_kernel(c1, g, 1))  # (T = c1, I/g)
            self.weight_l2i_conv2 = nn.Parameter(torch.empty(c2, t // g, 1, 1))
            nn.init.kaiming_uniform_(self.weight_l2i_conv2, a=1.0)
        else:
            self.weight_l2i_conv1 = nn.Parameter(torch.empty(t, ig, 1, 1))
            nn.init.kaiming_uniform_(self.weight_l2i_conv1, a=1.0)
            self.weight_l2i_conv2 = nn.Parameter(identity_kernel(c2, g, 1))  # (c2, T/g = c2/g)
        self.vector = nn.Parameter(torch.tensor([1.0, 0.5])[:, None].repeat(1, c2))
        self.bn = nn.BatchNorm2d(c2)

    def generate(self) -> Tensor:
        """The merged 1x1 kernel ``(c2, c1/g, 1, 1)``, in fp32 (fp64 for fp64 parameters), autocast off."""
        g, o, t = self.g, self.c2, self.t
        ig = self.c1 // g
        params = (self.vector, self.weight_origin, self.weight_l2i_conv1, self.weight_l2i_conv2)
        dtype = work_dtype(*params)
        vector, w0, w1, w2 = (_cast(p, dtype) for p in params)
        with no_autocast(w0):
            v = vector[:, :, None]  # (2, O, 1)
            w2 = (w2.view(o, t // g) * v[1]).view(g, o // g, t // g)
            low = torch.bmm(w2, w1.view(g, t // g, ig)).view(o, ig)
            return torch.addcmul(low, w0.view(o, ig), v[0]).view(o, ig, 1, 1)

    def forward_train(self, x: Tensor) -> Tensor:
        return self.bn(F.conv2d(x, _cast(self.generate(), _compute_dtype(x)), None, self.s, 0, 1, self.g))

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        return fold_bn(self.generate(), self.bn)


@register_block("conv")
class OREPA_LargeConv(ReparamBlock):
    """OREPA for large k: a deep linear stem of ``(k-1)/2`` OREPA 3x3 generators composed into one kxk.

    Stage widths as in the reference (internal width ``c2``). The composed kernel is the exact kernel of
    the stacked *unpadded* 3x3 convs (:func:`reparam.algebra.compose_sequential`); training and deploy
    both use it, with one conv and one BN. Groups are not supported (the reference's composition is
    only defined for g = 1).
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 5,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: Act = True,
    ) -> None:
        p = check_centred_geometry(c1, c2, k, s, p, g, d, "OREPA", dilation=False)
        if k < 5:
            raise ValueError(f"OREPA_LargeConv needs kernel size k >= 5, got k={k} (use OREPA)")
        if g != 1:
            raise ValueError(f"OREPA_LargeConv supports groups g=1 only, got g={g}")
        super().__init__(c1, c2, k, s, p, g, d, resolve_act(act))
        layers = (k - 1) // 2
        self.stages = nn.ModuleList(OREPAKernel(c1 if i == 0 else c2, c2, 3) for i in range(layers))
        self.bn = nn.BatchNorm2d(c2)

    def generate(self) -> Tensor:
        """The composed ``(c2, c1, k, k)`` kernel of the 3x3 generators, in fp32 (fp64), autocast off."""
        weight = self.stages[0].generate()
        for stage in self.stages[1:]:
            weight = compose_sequential(weight, stage.generate())
        return weight

    def forward_train(self, x: Tensor) -> Tensor:
        return self.bn(F.conv2d(x, _cast(self.generate(), _compute_dtype(x)), None, self.s, self.p))

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        return fold_bn(self.generate(), self.bn)


@register_block("conv")
class OREPARepVGG(ReparamBlock):
    """RepVGG-style OREPA: ``act(BN(conv(x, K_orepa)) + BN(conv_1x1(x)) + BN(x))``.

    The kxk branch is OREPA's generator without its own 1x1 branch (five branches, as the reference
    ``OREPA_3x3_RepVGG``); the identity BN exists only if c1 == c2 and s == 1.
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
        p = check_centred_geometry(c1, c2, k, s, p, g, d, "OREPA", dilation=False)
        if k < 3:
            raise ValueError(f"OREPARepVGG needs kernel size k >= 3, got k={k}")
        super().__init__(c1, c2, k, s, p, g, d, resolve_act(act))
        self.gen = OREPAKernel(c1, c2, k, g, branch_1x1=False)
        self.bn = nn.BatchNorm2d(c2)
        self.rbr_1x1 = ConvBN(c1, c2, 1, s, padding_for_branch(p, k, 1), g)
        self.rbr_identity = nn.BatchNorm2d(c1) if c1 == c2 and s == 1 else None

    def forward_train(self, x: Tensor) -> Tensor:
        y = self.bn(F.conv2d(x, self.gen(), None, self.s, self.p, 1, self.g)) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return y

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        dense = fold_bn(self.gen.generate(), self.bn)
        w1, b1 = self.rbr_1x1.fused()
        branches = [dense, (pad_kernel(w1, self.k), b1)]
        if self.rbr_identity is not None:
            eye = identity_kernel(self.c1, self.g, self.k, dtype=dense[0].dtype, device=dense[0].device)
            branches.append(fold_bn(eye, self.rbr_identity))
        return add_branches(*branches)
