"""Start from trained weights, on the default data: train plain YOLOv8n, adopt it into OREPA and RepVGG,
check that validation mAP is unchanged, fine-tune, convert, validate; a Markdown table of every step.

Recipe of ``reparam demo`` (imgsz 320, batch 8, nbs=batch, amp off, seed 0, deterministic, no plots) for
every training run, on the DeepForest tree-crown tiles. The control row continues the plain model for the
same fine-tuning epochs, so the effect of adoption is separated from the effect of more epochs.

    python benchmarks/adopt_workflow.py --epochs 20 --finetune 10 --out runs/adopt-workflow
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reparam.app.adopt import adopt
from reparam.app.data import resolve_data
from reparam.app.demo import MAP_TOL, Validator, load_unfused
from reparam.app.models import load
from reparam.app.train import train
from reparam.bench.profile import count_params
from reparam.text import text_table
from reparam.yolo import convert_model, deploy_checkpoint
from reparam.yolo.fonts import plot_fonts

# The demo's from-scratch run (README, `reparam demo`: yolov8n-orepa.yaml, 30 epochs, same recipe).
DEMO_ROW = {
    "step": "demo: yolov8n-orepa from scratch, 30 epochs (README)",
    "mAP50": 0.2135,
    "mAP50-95": 0.0690,
}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class Workflow:
    """The runs of one workflow: shared data, training recipe, validator and the table rows."""

    def __init__(self, out: Path, imgsz: int, batch: int) -> None:
        self.out, self.imgsz, self.batch = out, imgsz, batch
        self.data, _ = resolve_data(None, tile=imgsz, progress=print)
        self.validate = Validator(self.data, imgsz, batch, "cpu")
        self.rows: list[dict[str, Any]] = []

    def train(self, model: str | Path, epochs: int, name: str) -> tuple[Path, float]:
        run, seconds = _timed(
            lambda: train(
                str(model),
                self.data,
                epochs,
                self.imgsz,
                self.batch,
                "cpu",
                project=self.out,
                name=name,
                exist_ok=True,
                nbs=self.batch,
                plots=False,
                amp=False,
                seed=0,
                deterministic=True,
            )
        )
        return run.best, seconds

    def row(self, step: str, ckpt: Path, seconds: float, *, converted: bool = False) -> dict[str, Any]:
        """Validate ``ckpt`` (its training form unless ``converted``: then as Ultralytics fuses it)."""
        net = load(ckpt) if converted else load_unfused(ckpt, trust=False)
        params = count_params(convert_model(net.model) if converted else net.model)
        maps = self.validate(net)
        row = {"step": step, "mAP50": round(maps["mAP50"], 4), "mAP50-95": round(maps["mAP50-95"], 4)}
        row |= {"time s": round(seconds, 1), "params": f"{params:,}"}
        self.rows.append(row)
        print(text_table([row]), flush=True)
        return row


def _check(name: str, ok: bool) -> bool:
    print(f"[{'PASS' if ok else 'FAIL'}] {name}", flush=True)
    return ok


def _same_map(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(abs(a[k] - b[k]) <= MAP_TOL for k in ("mAP50", "mAP50-95"))


def _family(wf: Workflow, plain: Path, to: str, finetune: int, base: dict, fused: dict) -> bool:
    """Adopt ``plain`` into ``to``, validate, fine-tune, convert, validate; True if every check passed."""
    (dst, report), seconds = _timed(lambda: adopt(plain, to, out=wf.out / f"plain-{to}.pt", overwrite=True))
    print(report, flush=True)
    start = wf.row(f"{to}: adopted, before fine-tuning", dst, seconds)
    ok = _check(f"adopted {to} mAP equals plain (tol {MAP_TOL})", _same_map(start, base))
    best, seconds = wf.train(dst, finetune, f"{to}-finetune")
    tuned = wf.row(f"{to}: fine-tuned {finetune} epochs (training form)", best, seconds)
    deploy_pt = wf.out / "deploy" / f"{to}-deploy.pt"
    deploy, seconds = _timed(lambda: deploy_checkpoint(best, deploy_pt, overwrite=True))
    conv = wf.row(f"{to}: converted (deploy checkpoint)", deploy, seconds, converted=True)
    ok &= _check(f"{to} deploy mAP equals its training form (tol {MAP_TOL})", _same_map(conv, tuned))
    return ok & _check(f"{to} deploy params equal plain fused", conv["params"] == fused["params"])


def run(epochs: int, finetune: int, out: Path, families: list[str], control: bool) -> int:
    """The whole workflow; writes table.md and rows.json under ``out``; 0 if every check passed."""
    wf = Workflow(out.resolve(), 320, 8)
    ok = True
    with plot_fonts():
        plain, seconds = wf.train("yolov8n.yaml", epochs, "plain")
        base = wf.row(f"plain: yolov8n.yaml, {epochs} epochs from scratch", plain, seconds)
        fused = wf.row("plain: converted (BN folded, as Ultralytics fuses)", plain, 0.0, converted=True)
        for to in families:
            ok &= _family(wf, plain, to, finetune, base, fused)
        if control:
            best, seconds = wf.train(plain, finetune, "plain-continued")
            wf.row(f"control: plain continued {finetune} epochs", best, seconds)
    table = _markdown([*wf.rows, DEMO_ROW])
    (wf.out / "table.md").write_text(table + "\n")
    (wf.out / "rows.json").write_text(json.dumps(wf.rows, indent=1))
    print(f"\n{table}\n\n{'all checks passed' if ok else 'a check FAILED'}; outputs in {wf.out}", flush=True)
    return 0 if ok else 1


def _markdown(rows: list[dict[str, Any]]) -> str:
    cols = ["step", "mAP50", "mAP50-95", "time s", "params"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="from-scratch epochs of the plain model")
    p.add_argument("--finetune", type=int, default=10, help="fine-tuning epochs after adoption")
    p.add_argument("--families", default="orepa,repvgg", help="comma-separated adoption families")
    p.add_argument("--no-control", action="store_true", help="skip the plain-continued control run")
    p.add_argument("--out", type=Path, default=Path("runs/adopt-workflow"), help="output folder")
    a = p.parse_args()
    return run(a.epochs, a.finetune, a.out, a.families.split(","), not a.no_control)


if __name__ == "__main__":
    sys.exit(main())
