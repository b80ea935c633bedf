"""Dynamic convolution (ParameterNet, arXiv 2306.14525; CondConv, arXiv 1904.04971).

Each sample convolves with its own kernel ``sum_e alpha_e W_e``, ``alpha = sigmoid(Linear(GAP(x)))``.
The layer is not re-parameterizable into a static conv; only the BN after it folds (see
:class:`DynamicConvBNAct`). Two exact algorithms compute it (:func:`dynamic_conv2d`); the one used
under ONNX export / tracing keeps batch and image size dynamic.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam.algebra import fold_bn_tensors
from reparam.blocks.act import Act, resolve_act
from reparam.blocks.base import ReparamContainer, autopad, check_divisible, check_positive
from reparam.blocks.conv import ConvBNAct
from reparam.blocks.registry import register_block
from reparam.checks import strict_bools

__all__ = [
    "ALGORITHMS",
    "Bottleneck_DynamicConv",
    "C2f_DynamicConv",
    "DynamicConv",
    "DynamicConvBNAct",
    "dynamic_conv2d",
    "is_exporting",
]

Algorithm = Literal["auto", "grouped", "unfold"]
ALGORITHMS: tuple[str, ...] = ("auto", "grouped", "unfold")

# Samples per batch-as-groups conv. Measured on CPU (oneDNN): one grouped conv over a whole batch of 32
# gets up to 2x slower than chunks of 8 at large images (16->32 ch, 160 px); chunks of 8 never lose.
_BATCH_CHUNK = 8


# torch.export flags itself through torch.compiler.is_exporting (absent from older torch releases, where
# torch.export of the grouped algorithm raises on the symbolic group count rather than failing silently).
_torch_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def is_exporting() -> bool:
    """True under ONNX export, TorchScript tracing or torch.export, where shapes must stay symbolic."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or _torch_exporting()


def _aggregate(gates: Tensor, weight: Tensor) -> Tensor:
    """Per-sample kernels ``(B, c2, c1/g, kh, kw)`` = gates ``(B, E)`` times the expert bank."""
    e = weight.shape[0]
    return torch.matmul(gates, weight.reshape(e, -1)).view(gates.shape[0], *weight.shape[1:])


def _grouped(x: Tensor, gates: Tensor, weight: Tensor, bias: Tensor | None, conv: dict) -> Tensor:
    """Aggregate each sample's kernel, then run the batch as conv groups (chunks of _BATCH_CHUNK)."""
    b, c, h, w = x.shape
    if b > _BATCH_CHUNK:
        biases = bias.split(_BATCH_CHUNK) if bias is not None else [None] * math.ceil(b / _BATCH_CHUNK)
        chunks = zip(x.split(_BATCH_CHUNK), gates.split(_BATCH_CHUNK), biases, strict=True)
        return torch.cat([_grouped(xc, gc, weight, bc, conv) for xc, gc, bc in chunks])
    kern = _aggregate(gates, weight).flatten(0, 1)
    flat_bias = bias.reshape(-1) if bias is not None else None
    if b == 1:
        return F.conv2d(x, kern, flat_bias, **conv)
    y = F.conv2d(x.reshape(1, b * c, h, w), kern, flat_bias, **{**conv, "groups": conv["groups"] * b})
    return y.view(b, -1, y.shape[-2], y.shape[-1])


def _unfold(x: Tensor, gates: Tensor, weight: Tensor, bias: Tensor | None, conv: dict) -> Tensor:
    """im2col, then one batched matmul of every sample's aggregated kernel with its columns.

    The columns come from a fixed identity-patch depthwise conv (1x1 unpadded kernels: a strided view),
    so the graph has no shape-dependent attribute: exported, it keeps batch and image size dynamic.
    """
    c2, ig, kh, kw = weight.shape[1:]
    g, s = conv["groups"], conv["stride"]
    c1, kk = ig * g, kh * kw
    if kk == 1 and conv["padding"] == 0:
        cols = x[:, :, ::s, ::s] if s > 1 else x
    else:
        eye = torch.eye(kk, dtype=x.dtype, device=x.device).view(kk, 1, kh, kw).repeat(c1, 1, 1, 1)
        cols = F.conv2d(x, eye, None, s, conv["padding"], conv["dilation"], c1)  # (B, c1*kk, Ho, Wo)
    b, ho, wo = x.shape[0], cols.shape[-2], cols.shape[-1]
    kern = _aggregate(gates, weight).view(b, g, c2 // g, ig * kk)
    y = torch.matmul(kern, cols.reshape(b, g, ig * kk, ho * wo)).view(b, c2, ho, wo)
    # The bias joins in y's dtype (under autocast y is fp16/bf16 and the bias fp32), as in ``_grouped``.
    return y + bias[:, :, None, None].to(y.dtype) if bias is not None else y


_IMPLS = {"grouped": _grouped, "unfold": _unfold}


def dynamic_conv2d(
    x: Tensor,
    gates: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    algorithm: Algorithm = "auto",
) -> Tensor:
    """Conv of sample b with kernel ``sum_e gates[b, e] weight[e]`` plus ``bias[b]`` (already per sample).

    ``weight`` is ``(E, c2, c1/g, kh, kw)``, ``gates`` ``(B, E)``, ``bias`` ``(B, c2)``. ``auto`` picks
    ``unfold`` under export/tracing (dynamic shapes; in onnxruntime 1.4-10x faster than one conv over all
    experts stacked, measured at batch 1 and 8) and for unpadded 1x1 kernels at batch > 1 (then a plain
    batched matmul), else ``grouped`` (batch 1: one conv with the aggregated kernel), which is the fastest
    eager algorithm for k > 1 on CPU (im2col through a depthwise conv is slow in eager PyTorch).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "auto":
        one_by_one = weight.shape[-2:] == (1, 1) and padding == 0
        algorithm = "unfold" if is_exporting() or (one_by_one and x.shape[0] > 1) else "grouped"
    conv = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return _IMPLS[algorithm](x, gates, weight, bias, conv)


def _check_geometry(c1: int, c2: int, k: int, s: int, p: int | None, g: int, d: int, num_experts: int) -> int:
    """Validate a DynamicConv geometry and return the resolved padding."""
    check_positive(c1=c1, c2=c2, k=k, s=s, g=g, d=d, num_experts=num_experts)
    check_divisible(g, c1=c1, c2=c2)
    if p is None and k % 2 == 0:
        raise ValueError(f"kernel size k={k} must be odd for automatic 'same' padding (or pass p explicitly)")
    p = autopad(k, p, d)
    if not isinstance(p, int) or isinstance(p, bool) or p < 0:
        raise ValueError(f"padding p must be a non-negative integer, got {p!r}")
    return p


@strict_bools
@register_block("conv")
class DynamicConv(nn.Module):
    """ParameterNet dynamic conv: per-sample kernel ``sum_e sigmoid(Linear(GAP(x)))_e W_e``; no BN, no act.

    Parameters (CondConv reference layer: timm ``CondConv2d`` + ``Linear(c1, E)`` router):
    ``E*c2*(c1/g)*k*k + E*(c1+1)`` (``+ E*c2`` with bias). The expert bank ``weight`` is stored 3-D as
    ``(E, c2, c1/g*k*k)`` and the bias bank as ``(E, c2, 1)``: Ultralytics' trainer (8.4 ``build_optimizer``)
    hands only parameters with ``ndim in {2, 4}`` to MuSGD's Muon part, which orthogonalizes each as ONE
    matrix; a 2-D ``(E, P)`` bank (timm's layout) would be orthogonalized across experts, mixing them.
    3-D banks go to plain SGD instead (weight: decayed group; bias: the no-decay bias group).
    ``algorithm`` (default ``"auto"``) selects the :func:`dynamic_conv2d` algorithm; both are exact. For a
    fixed-batch export, ``"grouped"`` exports the cheaper aggregate-then-conv graph (batch frozen).
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
        bias: bool = False,
        num_experts: int = 4,
    ) -> None:
        super().__init__()
        p = _check_geometry(c1, c2, k, s, p, g, d, num_experts)
        self.c1, self.c2, self.k, self.s, self.p, self.g, self.d = c1, c2, k, s, p, g, d
        self.num_experts = num_experts
        self.algorithm: Algorithm = "auto"
        # The router (a Linear c1 -> E) is registered first: tools that read the input channels from the
        # first parameter's shape[1] (Ultralytics' get_flops) then see c1 rather than c2.
        self.routing_weight = nn.Parameter(torch.empty(num_experts, c1))
        self.routing_bias = nn.Parameter(torch.empty(num_experts))
        self.weight = nn.Parameter(torch.empty(num_experts, c2, c1 // g * k * k))
        self.bias: nn.Parameter | None
        self.register_parameter("bias", nn.Parameter(torch.empty(num_experts, c2, 1)) if bias else None)
        # A static per-channel bias appears only when a following BN is folded in (DynamicConvBNAct).
        self.static_bias: nn.Parameter | None
        self.register_parameter("static_bias", None)
        self.reset_parameters()

    @property
    def deployed(self) -> bool:
        """Always True: a dynamic conv has no static deploy form, so there is nothing to convert."""
        return True

    def reparameterize(self) -> None:
        """Nothing to convert (the protocol's no-op); a following BN folds through DynamicConvBNAct."""

    @property
    def fan_in(self) -> int:
        """Inputs per output element of one expert kernel: ``c1/g * k * k``."""
        return self.c1 // self.g * self.k * self.k

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every expert like timm's CondConv2d: kaiming-uniform (a = sqrt(5)) per expert."""
        for e in range(self.num_experts):
            nn.init.kaiming_uniform_(self.weight[e], a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.kaiming_uniform_(self.routing_weight, a=math.sqrt(5))  # as nn.Linear
        nn.init.uniform_(self.routing_bias, -1 / math.sqrt(self.c1), 1 / math.sqrt(self.c1))

    def kernel_bank(self) -> Tensor:
        """The experts as conv kernels, ``(E, c2, c1/g, k, k)`` (a view of ``weight``)."""
        return self.weight.view(self.num_experts, self.c2, self.c1 // self.g, self.k, self.k)

    def gates(self, x: Tensor) -> Tensor:
        """Routing weights ``sigmoid(Linear(GAP(x)))``, shape ``(B, E)``; they need not sum to 1."""
        return torch.sigmoid(F.linear(x.mean(dim=(2, 3)), self.routing_weight, self.routing_bias))

    def sample_bias(self, gates: Tensor) -> Tensor | None:
        """Per-sample bias ``(B, c2)``: gated expert biases plus the static (folded-BN) bias."""
        bias = torch.matmul(gates, self.bias.squeeze(-1)) if self.bias is not None else None
        if self.static_bias is not None:
            static = self.static_bias.expand(gates.shape[0], self.c2)
            bias = static if bias is None else bias + static
        return bias

    def forward(self, x: Tensor) -> Tensor:
        gates = self.gates(x)
        bias = self.sample_bias(gates)
        return dynamic_conv2d(
            x, gates, self.kernel_bank(), bias, self.s, self.p, self.d, self.g, self.algorithm
        )

    @torch.no_grad()
    def load_reference_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load weights of the reference layer (``routing.*`` Linear, ``cond_conv.*`` timm CondConv2d).

        Keys: ``routing.weight``, ``routing.bias``, ``cond_conv.weight`` ``(E, P)`` and optionally
        ``cond_conv.bias`` ``(E, c2)``, as in ParameterNet checkpoints.
        """
        expected = {"routing.weight", "routing.bias", "cond_conv.weight"} | (
            {"cond_conv.bias"} if self.bias is not None else set()
        )
        if set(state) != expected:
            raise ValueError(f"state keys must be {sorted(expected)}, got {sorted(state)}")
        self.routing_weight.copy_(state["routing.weight"])
        self.routing_bias.copy_(state["routing.bias"])
        self.weight.copy_(state["cond_conv.weight"].reshape(self.weight.shape))
        if self.bias is not None:
            self.bias.copy_(state["cond_conv.bias"].reshape(self.bias.shape))

    def extra_repr(self) -> str:
        return (
            f"c1={self.c1}, c2={self.c2}, k={self.k}, s={self.s}, p={self.p}, g={self.g}, d={self.d}, "
            f"bias={self.bias is not None}, num_experts={self.num_experts}"
        )


@register_block("conv")
class DynamicConvBNAct(nn.Module):
    """``act(BN(DynamicConv(x)))``, a drop-in for Ultralytics ``Conv`` as ParameterNet uses it.

    ``reparameterize()`` folds the BN: its scale multiplies every expert kernel, and its shift becomes
    the DynamicConv's static bias (it cannot go into the experts, since the gates do not sum to 1).
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
        num_experts: int = 4,
    ) -> None:
        super().__init__()
        self.conv = DynamicConv(c1, c2, k, s, p, g, d, bias=False, num_experts=num_experts)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(c2)
        self.act = resolve_act(act)

    @property
    def deployed(self) -> bool:
        """True once the BN has been folded into the dynamic conv."""
        return self.bn is None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.act(self.bn(y) if self.bn is not None else y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN into the expert kernels and a static bias, in place; a second call does nothing."""
        if self.bn is None:
            return
        conv, bn = self.conv, self.bn
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("DynamicConvBNAct.reparameterize: bn must track running statistics")
        bank = conv.weight.transpose(0, 1)  # (c2, E, P): BN scales output channels
        weight, shift = fold_bn_tensors(
            bank, None, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps
        )
        conv.weight.copy_(weight.transpose(0, 1).to(conv.weight.dtype))
        conv.static_bias = nn.Parameter(shift.to(conv.weight.dtype))
        self.bn = None


def _hidden(c2: int, e: float) -> int:
    """Hidden width ``int(c2 * e)``; ValueError naming ``e`` unless it is a positive number giving >= 1."""
    if not isinstance(e, int | float) or isinstance(e, bool) or not e > 0:
        raise ValueError(f"expansion e must be a positive number, got {type(e).__name__} {e!r}")
    if int(c2 * e) < 1:
        raise ValueError(f"hidden channels int(c2 * e) = int({c2} * {e}) must be >= 1")
    return int(c2 * e)


@strict_bools
@register_block("conv")
class Bottleneck_DynamicConv(ReparamContainer):
    """Ultralytics ``Bottleneck`` with dynamic cv2: ``[x +] cv2(cv1(x))``, residual if shortcut, c1 == c2.

    ``cv2`` is :class:`DynamicConvBNAct` (BN + SiLU after the dynamic conv, as in ParameterNet and as
    Ultralytics' ``Conv`` has), so its BN folds on conversion; ``cv2`` honours the groups ``g``.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        shortcut: bool = True,
        g: int = 1,
        k: tuple[int, int] = (3, 3),
        e: float = 0.5,
        num_experts: int = 4,
    ) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, g=g)
        if not (isinstance(k, tuple | list) and len(k) == 2):
            raise ValueError(
                f"k must be a pair (cv1 kernel, cv2 kernel) as in Ultralytics' Bottleneck, e.g. k=(3, 3); "
                f"got {type(k).__name__} {k!r}"
            )
        c_ = _hidden(c2, e)
        self.cv1 = ConvBNAct(c1, c_, k[0], 1)
        self.cv2 = DynamicConvBNAct(c_, c2, k[1], 1, g=g, num_experts=num_experts)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@strict_bools
@register_block("repeat")
class C2f_DynamicConv(ReparamContainer):
    """Ultralytics ``C2f`` whose n bottlenecks are :class:`Bottleneck_DynamicConv` (e = 1.0, groups g)."""

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        shortcut: bool = False,
        g: int = 1,
        e: float = 0.5,
        num_experts: int = 4,
    ) -> None:
        super().__init__()
        check_positive(c1=c1, c2=c2, n=n, g=g)
        self.c = _hidden(c2, e)
        self.cv1 = ConvBNAct(c1, 2 * self.c, 1, 1)
        self.cv2 = ConvBNAct((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(
            Bottleneck_DynamicConv(self.c, self.c, shortcut, g, k=(3, 3), e=1.0, num_experts=num_experts)
            for _ in range(n)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))
