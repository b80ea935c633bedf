"""Multiply-accumulates of the training forms that module-hook counters (thop) cannot see.

OREPA convolves with a functional ``F.conv2d`` on a kernel it generates at every forward, and DynamicConv
pools, routes, aggregates and convolves functionally, so a counter that hooks ``nn.Conv2d`` modules sees
only their BNs. :func:`thop_rules` gives thop one counting rule per such class: the real work of one
forward (convolution plus kernel generation for OREPA; pooling, router, aggregation and convolution for
DynamicConv). Deployed blocks count nothing here: their plain ``nn.Conv2d`` child is counted by thop itself.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from reparam.bench.dynamic import dynamic_conv_macs
from reparam.blocks.dynamic import DynamicConv
from reparam.blocks.orepa import EXPAND, OREPA, OREPA_1x1, OREPA_LargeConv, OREPAKernel, OREPARepVGG

__all__ = ["conv_macs", "orepa_generation_macs", "thop_rules", "training_macs"]


def conv_macs(out: Tensor, c1: int, g: int, k: int) -> int:
    """MACs of a conv giving ``out`` from ``c1`` input channels, groups ``g``, a ``k x k`` kernel."""
    return out.numel() * (c1 // g) * k * k


def _kernel_macs(gen: OREPAKernel) -> int:
    """MACs of one OREPAKernel generation: every branch's contribution to the ``(O, I/g, k, k)`` kernel."""
    o, ig, kk = gen.c2, gen.c1 // gen.g, gen.k * gen.k
    fixed = 2 + (gen.weight_1x1 is not None)  # mean filter, DCT prior, [centre tap]
    # origin (scaled add), fixed-filter factors, dw->pw product and its scaled add, 1x1->kxk
    per_tap = 1 + fixed + EXPAND + 1 + gen.t // gen.g
    return o * ig * kk * per_tap


def orepa_generation_macs(block: nn.Module) -> int:
    """MACs spent generating the kernel of an OREPA-family block once (weight-only, independent of batch)."""
    if isinstance(block, OREPA | OREPARepVGG):
        return _kernel_macs(block.gen)
    if isinstance(block, OREPA_1x1):
        return block.c2 * block.t * (block.c1 // block.g) + block.c2 * block.c1 // block.g
    if isinstance(block, OREPA_LargeConv):
        total, k = 0, 1
        for i, stage in enumerate(block.stages):
            total += _kernel_macs(stage)
            if i:  # compose_sequential: (c1, c2, k+2, k+2) outputs, each a c2 x 3 x 3 correlation
                total += block.c1 * stage.c2 * (k + 2) ** 2 * stage.c1 * 9
            k += 2
        return total
    raise ValueError(f"block must be an OREPA-family block, got {type(block).__name__}")


def training_macs(block: nn.Module, x: Tensor, y: Tensor) -> int:
    """MACs of one training-form forward of ``block`` (input ``x``, output ``y``), its child modules excluded.

    0 for a deployed block. OREPA family: the functional conv plus one kernel generation; DynamicConv:
    pooling, router, expert aggregation and the per-sample conv (``bench.dynamic.dynamic_conv_macs``).
    """
    if isinstance(block, DynamicConv):
        return dynamic_conv_macs(block, tuple(x.shape)).total
    if getattr(block, "deployed", False):
        return 0
    return conv_macs(y, block.c1, block.g, block.k) + orepa_generation_macs(block)


def _thop_rule(m: nn.Module, args: tuple, y: Tensor) -> None:
    """thop counting rule: add :func:`training_macs` to the module's ``total_ops``."""
    m.total_ops += training_macs(m, args[0], y)


def thop_rules() -> dict[type[nn.Module], Callable[[nn.Module, tuple, Tensor], None]]:
    """thop ``custom_ops`` for every class whose real work thop cannot see."""
    return dict.fromkeys((OREPA, OREPA_1x1, OREPA_LargeConv, OREPARepVGG, DynamicConv), _thop_rule)
