"""YOLOv6 v3.0 EfficientRep: converted vs unconverted latency of the n backbone, and params per variant.

Times the training form (multi-branch RepVGG blocks, BN) against the deploy form (one conv per block,
BN folded) side by side in interleaved rounds, at batch 1 and 320 px by default, for the backbone
alone and for backbone + Rep-BiFPAN neck. Then prints train/deploy parameter counts of every variant.
Usage: python benchmarks/efficientrep_latency.py [--imgsz 320] [--rounds 30] [--threads N]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import reparam
from reparam.bench.latency import compare_latency, format_ratios
from reparam.convert import randomize_bn_
from reparam.models import VARIANTS, efficientrep_backbone, reppan_neck


class Body(nn.Module):
    """Backbone followed by neck, as a detector runs them."""

    def __init__(self, backbone: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.neck(self.backbone(x))


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def time_pair(name: str, model: nn.Module, x: torch.Tensor, rounds: int) -> None:
    """Verify the conversion, then time train vs deploy form and print the table."""
    model = model.eval()
    randomize_bn_(model, seed=0)
    report = reparam.verify(model, x, per_block=False)
    deploy = reparam.reparameterize(model)
    timings = compare_latency({"unconverted": model, "converted": deploy}, x, rounds=rounds)
    print(f"\n{name}: verify max_rel={report.max_rel:.2e} (fp32), input {tuple(x.shape)}")
    print(format_ratios(timings, baseline="unconverted"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--imgsz", type=int, default=320, help="square input size in pixels")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, rounds={args.rounds}, batch 1")
    x = torch.randn(1, 3, args.imgsz, args.imgsz)
    time_pair("YOLOv6-n EfficientRep backbone", efficientrep_backbone("n"), x, args.rounds)
    time_pair(
        "YOLOv6-n backbone + Rep-BiFPAN neck",
        Body(efficientrep_backbone("n"), reppan_neck("n")),
        x,
        args.rounds,
    )

    print("\nparameters (train form -> deploy form)")
    head = ("variant", "backbone train", "backbone deploy", "neck train", "neck deploy")
    print(f"{head[0]:<8} {head[1]:>15} {head[2]:>16} {head[3]:>11} {head[4]:>12}")
    for v in VARIANTS:
        backbone, neck = efficientrep_backbone(v).eval(), reppan_neck(v).eval()
        counts = (
            params(backbone),
            params(reparam.reparameterize(backbone)),
            params(neck),
            params(reparam.reparameterize(neck)),
        )
        print(f"{v:<8} {counts[0]:>15,} {counts[1]:>16,} {counts[2]:>11,} {counts[3]:>12,}")


if __name__ == "__main__":
    main()
