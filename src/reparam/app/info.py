"""``reparam info``: params and FLOPs of a model's training, converted and plain forms, and its blocks."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from reparam.app.models import blocks_used, model_forms, stride_imgsz, yaml_name
from reparam.bench.profile import count_flops, count_params
from reparam.checks import strict_bools
from reparam.text import text_table
from reparam.yolo.deploy import reparam_globals, to_stock_modules

__all__ = ["describe"]


@strict_bools
def describe(model: str | Path, imgsz: int = 320, *, trust: bool = False) -> str:
    """Params and FLOPs of the training and converted forms (and plain model), and the blocks used.

    A ``.pt`` model is read without running code from it unless ``trust=True``."""
    imgsz = stride_imgsz(imgsz)
    forms = model_forms(model, trust=trust)
    x = torch.zeros(1, 3, imgsz, imgsz)
    rows = [
        {"form": name, "params": f"{count_params(m):,}", "GFLOPs": f"{count_flops(m, x) / 1e9:.3f}"}
        for name, m in forms.items()
    ]
    lines = [f"{model} at {imgsz}x{imgsz}", text_table(rows)]
    if not any(n.startswith("plain ") for n in forms):
        lines.append(
            f"(no plain counterpart: {yaml_name(forms['training form']) or model} is not a zoo model)"
        )
    used = blocks_used(forms["training form"])
    lines.append("blocks: " + (", ".join(f"{k} x{v}" for k, v in sorted(used.items())) or "none"))
    left = reparam_globals(to_stock_modules(copy.deepcopy(forms["converted"])))
    if left:
        lines.append("no stock Ultralytics form after conversion (deploy needs reparam): " + ", ".join(left))
    return "\n".join(lines)
