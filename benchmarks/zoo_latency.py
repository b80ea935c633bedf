"""Each zoo model: train/deploy params and GFLOPs, and CPU latency converted vs unconverted vs plain YOLO.

For each shipped family at scale n: the training form (unconverted, eval), the converted form (what
Ultralytics runs after the patched ``fuse()``) and the stock Ultralytics model it derives from, fused.
Latency is timed side by side in interleaved rounds (medians, batch 1). Ratios: converted / plain
(target ~1.0 for RepVGG/DBB/OREPA, the graphs are identical) and converted / unconverted (< 1).
GFLOPs come from Ultralytics' own counter (thop), which misses the batch-grouped convs inside
DynamicConv. Usage:
    python benchmarks/zoo_latency.py [--imgsz 640] [--rounds 10] [--families yolov8-orepa.yaml ...]
"""

from __future__ import annotations

import argparse
import copy
import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops

import reparam.yolo as ry
from reparam.bench.latency import compare_latency
from reparam.convert import randomize_bn_


def params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def build(name: str, seed: int = 0) -> DetectionModel:
    """The model of YAML ``name`` in eval mode with non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = DetectionModel(name, verbose=False).eval()
    randomize_bn_(model, seed=seed)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--scale", default="n")
    parser.add_argument("--families", nargs="+", default=ry.zoo_names())
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, {args.imgsz}px, rounds {args.rounds}")
    head = (
        f"{'model':<28} {'train params':>12} {'deploy params':>13} {'plain params':>12} "
        f"{'train GF':>8} {'deploy GF':>9} {'plain GF':>8} {'unconv ms':>9} {'conv ms':>8} {'plain ms':>8} "
        f"{'conv/plain':>10} {'conv/unconv':>11}"
    )
    print(head)
    for family in args.families:
        name = family.replace("-", f"{args.scale}-", 1)
        plain_name = ry.plain_counterpart(name)
        train = build(name)
        deploy = ry.convert_model(copy.deepcopy(train))
        plain = build(plain_name).fuse(verbose=False)
        with torch.no_grad():
            ref, got = train(x[..., :64, :64])[0], deploy(x[..., :64, :64])[0]
        rel = float((got - ref).abs().max() / ref.abs().max())
        t = compare_latency(
            {"unconv": train, "conv": deploy, "plain": plain}, x, rounds=args.rounds, calls_per_round=1
        )
        print(
            f"{name:<28} {params(train):>12,} {params(deploy):>13,} {params(plain):>12,} "
            f"{get_flops(train, args.imgsz):>8.2f} {get_flops(deploy, args.imgsz):>9.2f} "
            f"{get_flops(plain, args.imgsz):>8.2f} {t['unconv'].median_ms:>9.1f} {t['conv'].median_ms:>8.1f} "
            f"{t['plain'].median_ms:>8.1f} {t['conv'].ratio_to(t['plain']):>10.3f} "
            f"{t['conv'].ratio_to(t['unconv']):>11.3f}   (vs {plain_name}; max rel err {rel:.1e})",
            flush=True,
        )


if __name__ == "__main__":
    main()
