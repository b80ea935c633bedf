"""DynamicConv forward latency vs timm's CondConv2d-based layer (same weights) and vs a static conv.

Targets: ratio vs timm <= 1.0 everywhere, <= 1.25x the static conv at batch 1. Needs timm.
Run: python benchmarks/dynamic_latency.py [--rounds 20] [--batches 1 8 32] [--threads 1] [--onnx]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

from reparam.bench.dynamic import (
    compare_dynamic_latency,
    compare_dynamic_onnx_latency,
    format_dynamic_latency,
    format_onnx_latency,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds per case")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 (default) keeps ratios stable on a shared machine, 0 = torch default",
    )
    parser.add_argument("--onnx", action="store_true", help="also time exported graphs in onnxruntime")
    args = parser.parse_args()
    if args.threads < 0:
        raise SystemExit(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, rounds={args.rounds}")
    rows = compare_dynamic_latency(batches=args.batches, rounds=args.rounds, progress=print)
    print(format_dynamic_latency(rows))
    if args.onnx:
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape checks, by design
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter's notice
        with tempfile.TemporaryDirectory() as tmp:
            onnx_rows = compare_dynamic_onnx_latency(Path(tmp), batches=[b for b in args.batches if b <= 8])
        print("onnxruntime (CPU): dynamic-axes export vs fixed-batch export vs static conv")
        print(format_onnx_latency(onnx_rows))


if __name__ == "__main__":
    main()
