"""The least any exact OREPA generator can cost in a training step, measured beside plain and reparam's OREPA.

Two lower bounds replace the generator of every OREPA layer of the same network (nothing else changes:
same convs, BNs, parameters and SGD-with-momentum step over all of OREPA's parameters):
  floor-writes  forward writes the kernel once, backward writes each parameter's gradient once
                (what autograd training needs from any generator, fused or not);
  floor-gemm    the same, with the three GEMMs of the 1x1 -> kxk branch (kernel, grad of conv2, grad
                of idconv1: O*k*k*T*I multiply-adds each) computed on operands already in the layout
                each GEMM wants, so no layout copy, scale or other branch is paid for.
An exact generator also does the other five branches and the six scale gradients, so its ratio to
plain is above floor-gemm's. Ratios are medians of per-round ratios over interleaved rounds. Usage:
    python benchmarks/orepa_floor.py [--rounds 21] [--network conv8@112] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam.bench.train_cost import NETWORKS, build_network
from reparam.blocks.orepa import OREPAKernel


class _Writes(torch.autograd.Function):
    """Forward: one write of the kernel; backward: one write of every parameter's gradient."""

    @staticmethod
    def forward(ctx: Any, w0: Tensor, *params: Tensor) -> Tensor:
        ctx.shapes = [w0, *params]
        return w0.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.zeros_like(p) for p in ctx.shapes)


class _Gemms(torch.autograd.Function):
    """The 1x1 -> kxk branch's three GEMMs, operands read in place as the matrices each GEMM wants."""

    @staticmethod
    def forward(ctx: Any, c2: Tensor, c1: Tensor, w0: Tensor, *params: Tensor) -> Tensor:
        t, i = c1.shape[0], c1.shape[1]
        ctx.save_for_backward(c2, c1)
        ctx.others = [w0, *params]
        return (c2.reshape(-1, t) @ c1.reshape(t, i)).view(w0.shape)  # (O*k*k, T) @ (T, I)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        c2, c1 = ctx.saved_tensors
        t, i = c1.shape[0], c1.shape[1]
        g = grad.reshape(-1, i)  # (O*k*k, I)
        g_c2 = (g @ c1.reshape(t, i).t()).view(c2.shape)
        g_c1 = (c2.reshape(-1, t).t() @ g).view(c1.shape)
        return (g_c2, g_c1, *(torch.zeros_like(p) for p in ctx.others))


def _floor(gen: OREPAKernel, kind: str) -> Tensor:
    others = [
        p
        for name, p in gen.named_parameters()
        if name not in ("weight_1x1_kxk_conv2", "weight_1x1_kxk_idconv1")
    ]
    if kind == "floor-writes":
        return _Writes.apply(
            gen.weight_origin,
            gen.weight_1x1_kxk_conv2,
            gen.weight_1x1_kxk_idconv1,
            *[p for p in others if p is not gen.weight_origin],
        )
    return _Gemms.apply(
        gen.weight_1x1_kxk_conv2,
        gen.weight_1x1_kxk_idconv1,
        gen.weight_origin,
        *[p for p in others if p is not gen.weight_origin],
    )


def _case(
    network: str, kind: str, imgsz: int, batch: int
) -> tuple[nn.Module, Tensor, Tensor, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_network(network, "plain" if kind == "plain" else "OREPA").train()
    if kind.startswith("floor"):
        for m in model.modules():
            if isinstance(m, OREPAKernel):
                m.forward = lambda gen=m: _floor(gen, kind)  # type: ignore[method-assign]
    x, y = torch.randn(batch, 3, imgsz, imgsz), torch.randint(0, 10, (batch,))
    return model, x, y, torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)


def _step(model: nn.Module, x: Tensor, y: Tensor, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="conv8@112", choices=list(NETWORKS))
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timed steps per case")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the network's own)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    if args.rounds < 1 or args.threads < 1 or (args.batch is not None and args.batch < 1):
        parser.error("--rounds, --threads and --batch must be >= 1")
    torch.set_num_threads(args.threads)
    imgsz, batch = NETWORKS[args.network][0], args.batch or NETWORKS[args.network][1]
    kinds = ["plain", "OREPA", "floor-writes", "floor-gemm"]
    cases = {k: _case(args.network, k, imgsz, batch) for k in kinds}
    for case in cases.values():
        for _ in range(2):
            _step(*case)
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            t0 = time.perf_counter()
            _step(*cases[k])
            samples[k].append((time.perf_counter() - t0) * 1e3)
    print(f"{args.network}, batch {batch}, {args.threads} threads, {args.rounds} interleaved rounds")
    for k in kinds:
        ratio = statistics.median(a / b for a, b in zip(samples[k], samples["plain"], strict=True))
        print(f"  {k:<13} {statistics.median(samples[k]):7.1f} ms  {ratio:.3f}x plain")


if __name__ == "__main__":
    main()
