"""Training cost per block type (plain Conv+BN, RepVGG, DBB, OREPA): step time and peak training memory.

Prints the table with ratios to plain and OREPA vs DBB, the paper's reference ratios (ResNet-18, V100,
Table 4 of arXiv 2204.00826) and the targets, and saves CSV. Memory is each case's peak RSS during the
training steps minus its peak before them, measured in a fresh subprocess. Usage:
    python benchmarks/train_cost.py [--rounds 10] [--memory-steps 2] [--networks conv8@112]
        [--blocks plain OREPA] [--batch 4] [--imgsz 64] [--csv reports/train_cost.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from reparam.bench.report import write_csv
from reparam.bench.train_cost import BLOCKS, NETWORKS, format_train_cost, run_train_cost

PAPER = {"DBB": (0.241 / 0.086, 7.5 / 4.2), "OREPA": (0.120 / 0.086, 5.2 / 4.2)}
"""Paper figures, ResNet-18 on V100: (time per batch, GPU memory) as multiples of plain."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timed steps per block type")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per block type first")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps in each memory subprocess")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=list(BLOCKS))
    parser.add_argument("--batch", type=int, default=None, help="batch size for every network (default: own)")
    parser.add_argument("--imgsz", type=int, default=None, help="image size for every network (default: own)")
    parser.add_argument("--csv", type=Path, default=Path("reports/train_cost.csv"), help="CSV output path")
    args = parser.parse_args()

    rows = run_train_cost(
        networks=args.networks,
        blocks=args.blocks,
        batch=args.batch,
        imgsz=args.imgsz,
        rounds=args.rounds,
        warmup=args.warmup,
        memory_steps=args.memory_steps,
        progress=lambda msg: print(msg, flush=True),
    )
    print(f"\nTraining step (forward + backward + SGD momentum step), CPU, {torch.get_num_threads()} threads")
    print(format_train_cost(rows))
    print("\nPaper (ResNet-18, V100, batch 256 at 224 px): time / memory as multiples of plain")
    for name, (t, m) in PAPER.items():
        print(f"  {name:<5} {t:.2f}x / {m:.2f}x")
    print(
        "Targets: OREPA time <= 0.35x DBB and <= 1.3x plain (<= 1.15x on conv8@112); "
        "OREPA extra memory <= 0.2x DBB's"
    )
    for r in rows:
        if r["block"] == "OREPA":
            vs_dbb = (
                f", {r['time_x_dbb']}x DBB time; extra memory {r.get('extra_mem_x_dbb')}x DBB's"
                if r.get("time_x_dbb") is not None
                else " (DBB not run)"
            )
            print(f"  {r['network']}: OREPA {r['time_x_plain']}x plain{vs_dbb}")
    print(f"\nCSV: {write_csv(Path(args.csv), rows)}")


if __name__ == "__main__":
    main()
