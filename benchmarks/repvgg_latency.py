"""Latency of a RepVGG stack before and after conversion, and against a plain conv stack of the same shape.

Prints medians of interleaved rounds and the ratios that matter: converted / plain (target <= 1.02,
the graphs are the same) and converted / unconverted (target < 1). Usage:
    python benchmarks/repvgg_latency.py [--imgsz 128] [--batches 1 16] [--rounds 30]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import reparam
from reparam import QARepVGGBlock, RepVGGBlock
from reparam.bench.latency import compare_latency, format_ratios
from reparam.convert import randomize_bn_

# RepVGG-A0-like plan: (out channels, blocks) per stage; the first block of every stage has stride 2.
PLAN = ((48, 1), (48, 2), (96, 4), (192, 6), (768, 1))


def rep_stack(block: type[nn.Module], plan=PLAN) -> nn.Sequential:
    """A RepVGG-style network of ``block`` following ``plan``."""
    layers, c = [], 3
    for c2, n in plan:
        for i in range(n):
            layers.append(block(c, c2, 3, 2 if i == 0 else 1, act=nn.ReLU()))
            c = c2
    return nn.Sequential(*layers)


def plain_stack(plan=PLAN) -> nn.Sequential:
    """The same network built from plain ``Conv2d(bias=True) + ReLU`` pairs (the deploy graph)."""
    layers, c = [], 3
    for c2, n in plan:
        for i in range(n):
            layers += [nn.Conv2d(c, c2, 3, 2 if i == 0 else 1, 1), nn.ReLU()]
            c = c2
    return nn.Sequential(*layers)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, input {args.imgsz}px, rounds {args.rounds}, "
        f"{args.clock} clock"
    )
    for block in (RepVGGBlock, QARepVGGBlock):
        train = rep_stack(block)
        randomize_bn_(train, seed=0)
        train.eval()
        deploy = reparam.reparameterize(train)
        report = reparam.verify(train, input_shape=(1, 3, args.imgsz, args.imgsz), per_block=False)
        print(
            f"\n{block.__name__} stack: verify {'PASS' if report.ok else 'FAIL'} max_rel={report.max_rel:.2e}"
        )
        for batch in args.batches:
            x = torch.randn(batch, 3, args.imgsz, args.imgsz)
            timings = compare_latency(
                {"plain": plain_stack(), "converted": deploy, "unconverted": train},
                x,
                rounds=args.rounds,
                clock=clock,
            )
            print(f"-- batch {batch}")
            print(format_ratios(timings, "plain"))
            conv, plain, unconv = timings["converted"], timings["plain"], timings["unconverted"]
            print(
                f"converted/plain = {conv.ratio_to(plain):.3f} (target <= 1.02); "
                f"converted/unconverted = {conv.ratio_to(unconv):.3f} (target < 1)"
            )


if __name__ == "__main__":
    main()
