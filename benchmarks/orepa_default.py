"""Which OREPA default makes OREPA a drop-in for a plain conv: candidates under the plain model's own recipe.

The classification study's recipe (small CNN on Fashion-MNIST, 3 epochs, SGD nesterov, batch 128, warm-up
then cosine, 1 thread) at the plain model's best learning rate (0.1, README), same seeds for every row.
Candidates: OREPA's reference options ``init_hyper_para`` (every branch's initial kernel times it) and
``init_hyper_gamma`` (branch scales times its square root), and a 4x learning rate on OREPA's generator
parameters (a per-parameter-group scale). Validation top-1 (held-out part of the training subset) picks;
test top-1 is reported beside it. Also printed: the initial kernel std relative to ``nn.Conv2d``'s.

    python benchmarks/orepa_default.py --seeds 0 1 --out docs/evidence/orepa-default.csv
    python benchmarks/orepa_default.py --report docs/evidence/orepa-default.csv   # the README's table
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from reparam.bench.report import markdown_table, write_csv
from reparam.blocks import OREPA
from reparam.blocks.orepa import OREPAKernel
from reparam.convert import reparameterize
from reparam.models import small_cnn as zoo
from reparam.study.classification import ClassificationRecipe, ClassificationStudy
from reparam.study.runner import StudyContext
from reparam.study.stats import paired_difference

CANDIDATES: dict[str, tuple[dict[str, float], float]] = {
    "reference init (para 1, gamma 1)": ({"init_hyper_para": 1.0, "init_hyper_gamma": 1.0}, 1.0),
    "init_hyper_para 0.3 (kernel std = plain's)": ({"init_hyper_para": 0.3, "init_hyper_gamma": 1.0}, 1.0),
    "init_hyper_para 0.55": (
        {"init_hyper_para": 0.55, "init_hyper_gamma": 1.0},
        1.0,
    ),
    "init_hyper_para 0.2 (reparam's default)": ({"init_hyper_para": 0.2, "init_hyper_gamma": 1.0}, 1.0),
    "init_hyper_para 0.15": ({"init_hyper_para": 0.15, "init_hyper_gamma": 1.0}, 1.0),
    "init_hyper_para 0.10": ({"init_hyper_para": 0.1, "init_hyper_gamma": 1.0}, 1.0),
    "init_hyper_gamma 0.09 (kernel std = plain's)": ({"init_hyper_para": 1.0, "init_hyper_gamma": 0.09}, 1.0),
    "generator lr x4 (param group)": ({"init_hyper_para": 1.0, "init_hyper_gamma": 1.0}, 4.0),
}
"""Row name -> (OREPA init options, learning-rate scale of the generator parameters)."""


def kernel_std_ratio(options: dict[str, float], c1: int = 16, c2: int = 32, k: int = 3) -> float:
    """Std of OREPA's initial generated kernel over ``nn.Conv2d``'s default init std (same shape)."""
    torch.manual_seed(0)
    kernel = OREPAKernel(c1, c2, k, **options).generate()
    return kernel.std().item() / (1 / math.sqrt(3 * c1 * k * k))


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return 100.0 * (model(x).argmax(1) == y).double().mean().item()


def summary(rows: list[dict[str, object]]) -> str:
    """Markdown table: per candidate, mean ± std over seeds of validation and test top-1, and the paired
    validation difference to plain (same seeds) with its 95 % t-interval."""
    table = []
    for name in dict.fromkeys(str(r["candidate"]) for r in rows):
        mine = [r for r in rows if r["candidate"] == name]
        cell = {}
        for m in ("val top1", "test top1"):
            v = [float(str(r[m])) for r in mine]
            cell[m] = f"{statistics.fmean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
        ratio = float(str(mine[0]["kernel std / plain"]))
        lr = float(str(mine[0]["lr"]))
        plain = {r["seed"]: float(str(r["val top1"])) for r in rows if r["candidate"] == "plain"}
        pairs = [(float(str(r["val top1"])), plain[r["seed"]]) for r in mine if r["seed"] in plain]
        diff = "n/a"
        if pairs and name != "plain":
            mean, lo, hi = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
            diff = f"{mean:+.2f}" + ("" if lo is None else f" ({lo:+.2f} .. {hi:+.2f})")
        table.append({"candidate": name, "lr": f"{lr:g}", "seeds": str(len(mine)), **cell,
                      "val - plain (95 % t)": diff, "kernel std / plain's": f"{ratio:.2f}"})  # fmt: skip
    return markdown_table(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="candidate names (substring) to run")
    ap.add_argument("--no-plain", action="store_true", help="leave out the plain reference rows")
    ap.add_argument("--out", type=Path, default=None, help="CSV of every run")
    ap.add_argument("--report", type=Path, nargs="+", default=None, help="only print the table of these CSVs")
    args = ap.parse_args()
    if args.report:
        rows = []
        for path in args.report:
            with path.open(newline="") as f:
                rows += list(csv.DictReader(f))
        print(summary(rows))
        return
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StudyContext(args.epochs, torch.device("cpu"), False, Path(tmp), Path(tmp), 1, None)
        study = ClassificationStudy(ClassificationRecipe(), ctx)
    rows = []
    plan = [] if args.no_plain else [("plain", {}, 1.0)]
    plan += [(name, o, s) for name, (o, s) in CANDIDATES.items()]
    for name, options, scale in plan:
        if args.only and name != "plain" and not any(o in name for o in args.only):
            continue
        for seed in args.seeds:
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            variant = "plain" if name == "plain" else "orepa"
            blocks = dict(zoo.SMALL_CNN_BLOCKS, orepa=functools.partial(OREPA, **options))
            saved, zoo.SMALL_CNN_BLOCKS = zoo.SMALL_CNN_BLOCKS, blocks
            try:
                model = zoo.small_cnn(variant, study.recipe.width, 10, 1)
            finally:
                zoo.SMALL_CNN_BLOCKS = saved
            if scale != 1.0:
                gen = {id(p) for m in model.modules() if isinstance(m, OREPAKernel) for p in m.parameters()}
                groups = [
                    {"params": [p for p in model.parameters() if id(p) in gen], "lr": args.lr * scale},
                    {"params": [p for p in model.parameters() if id(p) not in gen]},
                ]
                # The study's trainer builds SGD(model.parameters(), lr=...): hand it the two groups instead.
                model.parameters = lambda groups=groups: groups  # type: ignore[method-assign]
            study._train(model, seed, args.lr)
            model.eval()
            deploy = reparameterize(model)
            rows.append(
                {
                    "candidate": name,
                    "seed": seed,
                    "lr": args.lr,
                    "val top1": top1(deploy, study.val_x, study.val_y),
                    "test top1": top1(deploy, study.test_x, study.test_y),
                    "kernel std / plain": 1.0 if name == "plain" else kernel_std_ratio(options),
                    "run s": time.perf_counter() - t0,
                }
            )
            print(rows[-1], flush=True)
    print(summary(rows))
    if args.out:
        write_csv(args.out, rows, overwrite=True)


if __name__ == "__main__":
    main()
