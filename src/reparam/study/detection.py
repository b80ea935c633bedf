"""Detection study task: plain YOLOv8n vs the reparam zoo on the default tree-crown data (Ultralytics).

Training goes through an injectable ``train_fn`` (default: ``reparam.app.train.train``, the ``reparam train``
pipeline). mAP is measured by Ultralytics' validator on the checkpoint converted by
``reparam.yolo.convert_model`` (the deploy form); a block left unconverted is an error naming it.
INT8 is not run for detection: see ``INT8_SKIPPED``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reparam.bench.latency import compare_latency
from reparam.bench.profile import count_flops, count_params
from reparam.study.runner import PeakMemory, RunRecord, StudyContext, VariantProfile
from reparam.text import say

__all__ = ["DETECTION_MODELS", "INT8_SKIPPED", "DetectionRecipe", "DetectionStudy"]

DETECTION_MODELS: dict[str, str] = {
    "plain": "yolov8n.yaml",
    "repvgg": "yolov8n-repvgg.yaml",
    "qarepvgg": "yolov8n-qarepvgg.yaml",
    "dbb": "yolov8n-dbb.yaml",
    "orepa": "yolov8n-orepa.yaml",
    "efficientrep": "yolov8n-efficientrep.yaml",
    "dynamic": "yolov8n-c2f-dynamicconv.yaml",
}
"""Variant -> model YAML (Ultralytics' own for "plain", reparam's zoo for the others)."""

INT8_SKIPPED = (
    "INT8 skipped for detection: its metric needs Ultralytics' NMS and mAP evaluation on the quantized "
    "ONNX graph plus letterboxed calibration images, which this study does not implement yet"
)


@dataclass(frozen=True)
class DetectionRecipe:
    """Budget and recipe of the detection study (``data=None``: the default tree-crown data set)."""

    data: str | Path | None = None
    imgsz: int = 320
    batch: int = 16
    workers: int = 0
    latency_rounds: int = 20
    train_fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    """``train_fn(model, data=, epochs=, imgsz=, batch=, device=, project=, name=, **overrides)`` returning
    an object with ``best`` (checkpoint) and ``data`` (data YAML); default ``reparam.app.train.train``."""

    def __post_init__(self) -> None:
        for name in ("imgsz", "batch", "latency_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe.{name} must be >= 1, got {getattr(self, name)}")


class DetectionStudy:
    """Trains one detector per (variant, seed), validates its deploy form, profiles the deploy forms."""

    metric = "mAP50-95"
    shown = ("mAP50-95", "mAP50")
    plot_latency = ("torch b1", None)

    def __init__(self, recipe: DetectionRecipe, ctx: StudyContext) -> None:
        epochs, device, int8, out, progress = ctx.epochs, ctx.device, ctx.int8, ctx.out, ctx.progress
        if recipe.train_fn is None:
            from reparam.app.train import train

            self.train_fn: Callable[..., Any] = train
        else:
            self.train_fn = recipe.train_fn
        self.recipe, self.epochs, self.device, self.progress = recipe, epochs, device, progress
        self.runs_dir = (out / "runs").resolve()
        self.memory = PeakMemory(device)
        self.notes: list[str] = [INT8_SKIPPED] if int8 else []
        if int8:
            say(progress, INT8_SKIPPED)
        self._best: dict[str, Path] = {}

    def describe(self) -> dict[str, object]:
        """The recipe as report rows."""
        r = self.recipe
        return {
            "data": str(r.data or "default tree-crown data (DeepForest)"),
            "training": f"Ultralytics via {getattr(self.train_fn, '__module__', '?')}."
            f"{getattr(self.train_fn, '__name__', '?')}, imgsz {r.imgsz}, batch {r.batch}, "
            "deterministic=True; "
            "time per epoch includes Ultralytics' per-epoch validation",
            "memory method": f"{self.memory.method or 'not available'} (one peak over the training call)",
            "runs folder": str(self.runs_dir),
        }

    def _deploy(self, ckpt: Path) -> Any:
        from reparam.app.models import load
        from reparam.yolo import convert_model, pending_blocks

        net = load(ckpt)
        convert_model(net.model)
        left = pending_blocks(net.model)
        if left:
            raise RuntimeError(f"{ckpt}: blocks not converted to the deploy form: {', '.join(left)}")
        return net

    def run(self, variant: str, seed: int) -> RunRecord:
        """Train ``variant`` with ``seed``, then mAP of the converted checkpoint on the validation split."""
        r, name = self.recipe, f"{variant}-seed{seed}"
        t0 = time.perf_counter()
        self.memory.start()
        result = self.train_fn(
            DETECTION_MODELS[variant],
            data=r.data,
            epochs=self.epochs,
            imgsz=r.imgsz,
            batch=r.batch,
            device=str(self.device),
            project=self.runs_dir,
            name=name,
            seed=seed,
            deterministic=True,
            exist_ok=True,
            workers=r.workers,
            plots=False,
        )
        peak = self.memory.stop()
        train_s = time.perf_counter() - t0
        net = self._deploy(Path(result.best))
        m = net.val(
            data=str(result.data),
            imgsz=r.imgsz,
            batch=r.batch,
            device=str(self.device),
            plots=False,
            verbose=False,
            project=str(self.runs_dir),
            name=f"{name}-val-deploy",
            exist_ok=True,
        )
        self._best.setdefault(variant, Path(result.best))
        metrics = {"mAP50-95": float(m.box.map), "mAP50": float(m.box.map50)}
        return RunRecord(variant, seed, metrics, train_s / self.epochs, peak, time.perf_counter() - t0)

    def profile(self, variants: Sequence[str]) -> dict[str, VariantProfile]:
        """Params (training YAML, deploy form), GFLOPs and interleaved batch-1 latency of the deploy forms."""
        from reparam.app.models import load

        forms: dict[str, nn.Module] = {
            v: self._deploy(self._best[v]).model.float().eval().to(self.device) for v in variants
        }
        x = torch.zeros(1, 3, self.recipe.imgsz, self.recipe.imgsz, device=self.device)
        profiles = {
            v: VariantProfile(
                v, count_params(load(DETECTION_MODELS[v]).model), count_params(m), count_flops(m, x) / 1e9
            )
            for v, m in forms.items()
        }
        timed = compare_latency(forms, x, rounds=self.recipe.latency_rounds)
        for v in variants:
            profiles[v].latency["torch b1"] = timed[v]
        return profiles
