"""Classification study task: the small CNN family on Fashion-MNIST (or injected images), fp32 and INT8.

Recipe (same for every variant and seed): a fixed training subset, SGD with Nesterov momentum, linear
warm-up then cosine decay, no augmentation; images normalized with the training subset's mean and std.
After training the model is converted (``reparam.reparameterize``) and top-1 is measured on the deploy
form; the training form's top-1 is kept beside it as the check that conversion changed nothing.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam.bench.latency import compare_latency
from reparam.bench.profile import count_flops, count_params
from reparam.checks import strict_bools
from reparam.convert import reparameterize
from reparam.data.fashion_mnist import load_fashion_mnist
from reparam.models.small_cnn import SMALL_CNN_STAGES, small_cnn
from reparam.study.runner import PeakMemory, RunRecord, StudyContext, VariantProfile
from reparam.text import say

__all__ = ["ClassificationRecipe", "ClassificationStudy", "ImageSplits", "fashion_mnist_splits"]


@dataclass
class ImageSplits:
    """Train and test images ``(N, H, W)`` or ``(N, C, H, W)`` (uint8 or float) with int64 labels."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int = 10
    name: str = "custom images"

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        ):
            if x.ndim not in (3, 4) or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
                raise ValueError(
                    f"{split} images {tuple(x.shape)} and labels {tuple(y.shape)} must be (N, [C,] H, W) "
                    "and (N,) with N >= 2"
                )
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise ValueError(f"{split} labels must lie in 0..{self.num_classes - 1}")


def fashion_mnist_splits(
    train_size: int = 6000, test_size: int = 10000, root: str | Path | None = None
) -> ImageSplits:
    """A fixed random ``train_size`` subset of Fashion-MNIST's training set (seed 0) and its first
    ``test_size`` test images; the same subset for every variant and seed."""
    x, y = load_fashion_mnist("train", root)
    tx, ty = load_fashion_mnist("test", root)
    if not 2 <= train_size <= len(x) or not 2 <= test_size <= len(tx):
        raise ValueError(
            f"train_size must lie in 2..{len(x)} and test_size in 2..{len(tx)}, got {train_size}, {test_size}"
        )
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:train_size]
    return ImageSplits(x[pick], y[pick], tx[:test_size], ty[:test_size], 10, "Fashion-MNIST")


@strict_bools
@dataclass(frozen=True)
class ClassificationRecipe:
    """Budget and recipe of the classification study (defaults fit a 2-core CPU: 6 variants x 3 seeds)."""

    train_size: int = 6000
    test_size: int = 10000
    width: int = 16
    batch: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.3
    calib_images: int = 512
    int8_per_channel: bool = True
    """INT8 weight scales per output channel (False: one per tensor, as in the QARepVGG paper's PTQ)."""
    latency_batches: tuple[int, ...] = (1, 64)
    latency_rounds: int = 20
    dataset: ImageSplits | None = field(default=None, compare=False, repr=False)
    """Injected images instead of Fashion-MNIST (``train_size``/``test_size`` then do not apply)."""

    def __post_init__(self) -> None:
        for name in ("train_size", "test_size", "width", "batch", "calib_images", "latency_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe.{name} must be >= 1, got {getattr(self, name)}")
        if not self.latency_batches or any(b < 1 for b in self.latency_batches):
            raise ValueError(f"recipe.latency_batches must list sizes >= 1, got {self.latency_batches}")
        if not self.lr > 0 or self.warmup_epochs < 0:
            raise ValueError(
                f"recipe.lr must be > 0 and warmup_epochs >= 0, got {self.lr}, {self.warmup_epochs}"
            )


def _nchw(images: Tensor) -> Tensor:
    """Float ``(N, C, H, W)`` images from ``(N, H, W)`` or ``(N, C, H, W)``."""
    x = images.float()
    return x[:, None] if x.ndim == 3 else x


def _logits(fn: Callable[[Tensor], Tensor], x: Tensor, batch: int = 1000) -> Tensor:
    with torch.inference_mode():
        return torch.cat([fn(xb).float().cpu() for xb in x.split(batch)])


def _top1(logits: Tensor, labels: Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels.cpu()).double().mean().item()


def _schedule(recipe: ClassificationRecipe, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """LR factor per step: linear warm-up over ``warmup_epochs``, then cosine decay to zero."""
    warm = max(1, round(recipe.warmup_epochs * steps_per_epoch))
    total = max(warm + 1, steps_per_epoch * epochs)
    return lambda step: (
        (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
    )


class ClassificationStudy:
    """Trains, converts, evaluates and (optionally) quantizes one small CNN per (variant, seed)."""

    metric = "top1"

    def __init__(self, recipe: ClassificationRecipe, ctx: StudyContext) -> None:
        self.recipe, self.epochs, self.device, self.int8 = recipe, ctx.epochs, ctx.device, ctx.int8
        self.workdir, self.num_threads, self.progress = ctx.workdir, ctx.num_threads, ctx.progress
        device, int8 = ctx.device, ctx.int8
        data = recipe.dataset or fashion_mnist_splits(recipe.train_size, recipe.test_size)
        self.data_name, self.num_classes = data.name, data.num_classes
        train, test = _nchw(data.train_images), _nchw(data.test_images)
        mean, std = train.mean(), train.std()  # of the training images, applied to both splits
        self.train_x, self.test_x = ((train - mean) / std).to(device), ((test - mean) / std).to(device)
        self.train_y, self.test_y = data.train_labels.long().to(device), data.test_labels.long().to(device)
        self.calibration = self.train_x[: recipe.calib_images].cpu()
        self.memory = PeakMemory(device)
        self.shown = ("top1", "top1 int8", "int8 drop", "int8 agreement") if int8 else ("top1",)
        b = max(recipe.latency_batches)
        self.plot_latency = (f"torch b{b}", f"ort int8 b{b}" if int8 else None)
        self.notes: list[str] = []
        if self.memory.method is None:
            self.notes.append(
                "peak memory not measured: /proc/self/clear_refs or glibc malloc_trim unavailable"
            )
        if int8 and device.type != "cpu":
            self.notes.append(
                "INT8 runs in onnxruntime on the CPU (CPUExecutionProvider) whatever the device"
            )
        self._deploy: dict[str, nn.Module] = {}
        self._onnx: dict[str, object] = {}

    def describe(self) -> dict[str, object]:
        """The recipe as report rows."""
        r = self.recipe
        widths = "-".join(str(r.width * m) for m, _ in SMALL_CNN_STAGES)
        strides = "-".join(str(s) for _, s in SMALL_CNN_STAGES)
        scales = "per-channel" if r.int8_per_channel else "per-tensor"
        return {
            "data": f"{self.data_name}: {len(self.train_x)} train images (fixed subset), "
            f"{len(self.test_x)} test images",
            "model": f"small CNN: 3x3 conv stages of {widths} channels (strides {strides}), GAP, linear",
            "optimizer": f"SGD nesterov lr {r.lr} momentum {r.momentum} wd {r.weight_decay}, "
            f"batch {r.batch}, warm-up {r.warmup_epochs} epochs then cosine, no augmentation",
            "memory method": self.memory.method or "not available",
            "int8": f"onnxruntime quantize_static: QDQ, {scales} S8 weights, U8 activations, MinMax on "
            f"{len(self.calibration)} training images"
            if self.int8
            else "off",
        }

    def _train(self, model: nn.Module, seed: int) -> tuple[list[float], list[float | None]]:
        r, n = self.recipe, len(self.train_x)
        batch = min(r.batch, n)
        steps = n // batch
        opt = torch.optim.SGD(
            model.parameters(), lr=r.lr, momentum=r.momentum, nesterov=True, weight_decay=r.weight_decay
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(r, steps, self.epochs))
        gen = torch.Generator().manual_seed(seed)
        times, peaks = [], []
        model.train()
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen)[: steps * batch].to(self.device)
            self.memory.start()
            t0 = time.perf_counter()
            for idx in order.split(batch):
                loss = F.cross_entropy(model(self.train_x[idx]), self.train_y[idx])
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"training loss became {loss.item()} (lr {r.lr} too high for this model?)"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - t0)
            peaks.append(self.memory.stop())
        return times, peaks

    def run(self, variant: str, seed: int) -> RunRecord:
        """Train ``variant`` with ``seed``, convert, and measure top-1 (deploy form; INT8 if asked)."""
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = small_cnn(variant, self.recipe.width, self.num_classes, self.train_x.shape[1]).to(self.device)
        times, peaks = self._train(model, seed)
        model.eval()
        train_logits = _logits(model, self.test_x)
        deploy = reparameterize(model)
        deploy_logits = _logits(deploy, self.test_x)
        metrics = {
            "top1": _top1(deploy_logits, self.test_y),
            "top1 train form": _top1(train_logits, self.test_y),
            "deploy max_rel": ((deploy_logits - train_logits).abs().max() / train_logits.abs().max()).item(),
        }
        if metrics["top1"] != metrics["top1 train form"]:
            self.notes.append(
                f"{variant} seed {seed}: deploy top-1 {metrics['top1']:.2f} differs from the training form's "
                f"{metrics['top1 train form']:.2f} (max_rel {metrics['deploy max_rel']:.1e})"
            )
        if self.int8:
            metrics.update(self._quantized(variant, seed, deploy))
        if variant not in self._deploy:
            self._deploy[variant] = deploy
        measured = [p for p in peaks if p is not None]
        peak = sum(measured) / len(measured) if measured else None
        return RunRecord(variant, seed, metrics, sum(times) / len(times), peak, time.perf_counter() - t0)

    def _quantized(self, variant: str, seed: int, deploy: nn.Module) -> dict[str, float]:
        from reparam.bench.int8 import logit_agreement, quantize_model

        q = quantize_model(
            copy.deepcopy(deploy).cpu(),
            self.calibration,
            self.workdir,
            f"{variant}-seed{seed}",
            threads=self.num_threads,
            per_channel=self.recipe.int8_per_channel,
        )
        test_x = self.test_x.cpu()
        fp32, int8 = _logits(q.fp32, test_x), _logits(q.int8, test_x)
        self._onnx.setdefault(variant, q)
        agree, cosine = logit_agreement(fp32, int8)
        top_fp32, top_int8 = _top1(fp32, self.test_y), _top1(int8, self.test_y)
        return {
            "top1 ort fp32": top_fp32,
            "top1 int8": top_int8,
            "int8 drop": top_fp32 - top_int8,
            "int8 agreement": 100.0 * agree,
            "int8 cosine": cosine,
        }

    def profile(self, variants: Sequence[str]) -> dict[str, VariantProfile]:
        """Params, GFLOPs and interleaved latency of the first seed's deploy forms (PyTorch; ORT if INT8)."""
        forms = {v: self._deploy[v] for v in variants}
        shape = tuple(self.test_x.shape[1:])
        profiles = {
            v: VariantProfile(
                v,
                count_params(small_cnn(v, self.recipe.width, self.num_classes, shape[0])),
                count_params(m),
                count_flops(m, self.test_x[:1]) / 1e9,
            )
            for v, m in forms.items()
        }
        gen = torch.Generator().manual_seed(0)
        for b in self.recipe.latency_batches:
            x = torch.randn((b, *shape), generator=gen)
            say(
                self.progress,
                f"  latency at batch {b}: PyTorch deploy forms"
                + (", onnxruntime fp32/int8" if self.int8 else ""),
            )
            calls = 3 if b == 1 else 1
            timed = compare_latency(
                forms, x.to(self.device), rounds=self.recipe.latency_rounds, calls_per_round=calls
            )
            for v in variants:
                profiles[v].latency[f"torch b{b}"] = timed[v]
            if self.int8:
                runners = {
                    f"{v} {k}": getattr(self._onnx[v], k).runner(x)
                    for v in variants
                    for k in ("fp32", "int8")
                }
                timed = compare_latency(runners, x, rounds=self.recipe.latency_rounds, calls_per_round=calls)
                for v in variants:
                    for k in ("fp32", "int8"):
                        profiles[v].latency[f"ort {k} b{b}"] = timed[f"{v} {k}"]
        return profiles
