"""Params, FLOPs and side-by-side latency of a model's forms (training, converted, plain).

FLOPs are counted by ``torch.utils.flop_counter`` on a real forward pass (2 FLOPs per multiply-add, the
convention behind Ultralytics' "GFLOPs"), so convolutions issued through ``F.conv2d`` with runtime
kernels (OREPA's online kernel generation, DynamicConv's per-sample experts) are counted too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from reparam.bench.latency import Timing, compare_latency
from reparam.text import Progress, say, text_table

__all__ = ["FormProfile", "count_flops", "count_params", "format_profiles", "profile_forms", "profile_rows"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs of one eval-mode forward pass of ``model`` on ``x`` (2 per multiply-add)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass
class FormProfile:
    """One form of a model: parameter count, GFLOPs at batch 1, latency per batch size."""

    name: str
    params: int
    gflops: float
    latency: dict[int, Timing] = field(default_factory=dict)


def profile_forms(
    forms: Mapping[str, nn.Module],
    imgsz: int,
    batches: Sequence[int] = (1, 8),
    rounds: int = 20,
    progress: Progress | None = None,
) -> list[FormProfile]:
    """Params, GFLOPs and latency (interleaved side by side, per batch size) of every form in ``forms``."""
    if not forms:
        raise ValueError("forms must name at least one model")
    if any(b < 1 for b in batches):
        raise ValueError(f"batches must be positive sizes, got {list(batches)}")
    ref = next(next(iter(forms.values())).parameters())
    x1 = torch.randn(1, 3, imgsz, imgsz, dtype=ref.dtype, device=ref.device)
    profiles = {n: FormProfile(n, count_params(m), count_flops(m, x1) / 1e9) for n, m in forms.items()}
    for b in batches:
        say(progress, f"latency at batch {b}, {imgsz}x{imgsz}: {', '.join(forms)}")
        x = torch.randn(b, 3, imgsz, imgsz, dtype=ref.dtype, device=ref.device)
        timings = compare_latency(forms, x, rounds=rounds, calls_per_round=3 if b == 1 else 1, warmup=2)
        for n, t in timings.items():
            profiles[n].latency[b] = t
    return list(profiles.values())


def profile_rows(profiles: Sequence[FormProfile], baseline: str) -> list[dict[str, object]]:
    """One flat row per form (for CSV/Markdown): params, GFLOPs, medians and ratios to ``baseline``."""
    base = {p.name: p for p in profiles}.get(baseline)
    if base is None:
        raise ValueError(f"baseline {baseline!r} is not among the forms {[p.name for p in profiles]}")
    rows = []
    for p in profiles:
        row: dict[str, object] = {"form": p.name, "params": p.params, "GFLOPs": round(p.gflops, 3)}
        for b, t in p.latency.items():
            row[f"b{b} median ms"] = round(t.median_ms, 3)
            row[f"b{b} p10-p90 ms"] = f"{t.p10_ms:.2f}-{t.p90_ms:.2f}"
            row[f"b{b} vs {baseline}"] = round(t.ratio_to(base.latency[b]), 3)
            row[f"b{b} img/s"] = round(1e3 * b / t.median_ms, 1)
        rows.append(row)
    return rows


def format_profiles(profiles: Sequence[FormProfile], baseline: str) -> str:
    """A fixed-width text table of :func:`profile_rows` (p10-p90 spread omitted)."""
    rows = profile_rows(profiles, baseline)
    return text_table(rows, [c for c in rows[0] if "p10" not in c])
