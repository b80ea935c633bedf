"""``reparam bench``: side-by-side latency, params and FLOPs of each model's training, converted and plain
forms, optionally the training cost per block type; report in ``out``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from reparam.app.models import model_forms, stride_imgsz
from reparam.app.report import BASELINE, write_bench_report
from reparam.bench.profile import FormProfile, format_profiles, profile_forms
from reparam.checks import strict_bools
from reparam.io import check_folder
from reparam.text import Progress, say

__all__ = ["run_bench"]


@strict_bools
def run_bench(
    models: Sequence[str] = ("yolov8n-orepa.yaml", "yolov8n-repvgg.yaml"),
    imgsz: int = 320,
    batch: int = 8,
    rounds: int = 20,
    train_cost: bool = False,
    out: str | Path = "runs/reparam-bench",
    progress: Progress | None = None,
    *,
    trust: bool = False,
) -> list[dict[str, object]]:
    """Latency (batch 1 and ``batch``), params and FLOPs of each model's training, converted, plain forms.

    ``.pt`` models are read without running code from them unless ``trust=True``; every model is loaded
    before the first measurement. ``out`` is the command's own report folder: a re-run replaces the report
    files it wrote there (atomically), nothing else. Returns the rows of ``out/bench.csv``.
    """
    imgsz, out = stride_imgsz(imgsz), check_folder("out", out, "the report")
    forms = {name: model_forms(name, trust=trust) for name in models}
    profiles: dict[str, list[FormProfile]] = {}
    for name in models:
        say(progress, f"\n== {name}")
        profiles[name] = profile_forms(forms[name], imgsz, (1, batch), rounds, progress)
        say(progress, format_profiles(profiles[name], BASELINE))
    cost = None
    if train_cost:
        from reparam.bench.train_cost import format_train_cost, run_train_cost

        cost = run_train_cost(progress=progress)
        say(progress, format_train_cost(cost))
    title = f"{imgsz}x{imgsz}, CPU threads {torch.get_num_threads()}, {rounds} rounds"
    rows = write_bench_report(out, title, profiles, cost)
    say(progress, f"\nreport: {out / 'bench.md'}")
    return rows
