"""Classification study task: the small CNN family on Fashion-MNIST (or injected images), fp32 and INT8.

Recipe (same for every variant and seed): a fixed training subset minus a fixed validation split (the
learning-rate sweep picks by validation top-1, never by test), SGD with Nesterov momentum, linear warm-up
then cosine decay, no augmentation; images normalized with the training part's mean and std. After
training the model is converted (``reparam.reparameterize``) and top-1 is measured on the deploy form; the
training form's top-1 is kept beside it as the check that conversion changed nothing. INT8: onnxruntime
static quantization with per-channel and with per-tensor weight scales (the QARepVGG paper's setting).
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam.bench.latency import compare_latency
from reparam.bench.profile import count_flops, count_params
from reparam.convert import reparameterize
from reparam.data.fashion_mnist import load_fashion_mnist
from reparam.models.small_cnn import SMALL_CNN_STAGES, small_cnn
from reparam.study.runner import PeakMemory, RunRecord, StudyContext, VariantProfile
from reparam.text import say
from reparam.verification import relative_error

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


@dataclass(frozen=True)
class ClassificationRecipe:
    """Budget and recipe of the classification study (defaults fit a 2-core CPU: 6 variants x 3 seeds)."""

    train_size: int = 6000
    test_size: int = 10000
    width: int = 16
    val_fraction: float = 0.2
    """Share of the training subset held out as the validation split of the learning-rate sweep."""
    batch: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.3
    calib_images: int = 512
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
        if not 0 < self.val_fraction < 1 or self.warmup_epochs < 0:
            raise ValueError(
                f"recipe.val_fraction must lie in (0, 1) and warmup_epochs be >= 0, got {self.val_fraction}, "
                f"{self.warmup_epochs}"
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
    int8_phase = False  # INT8 is measured inside each test run (the model is in memory there)

    def __init__(self, recipe: ClassificationRecipe, ctx: StudyContext) -> None:
        self.recipe, self.device, self.int8 = recipe, ctx.device, ctx.int8
        self.epochs = {"sweep": ctx.sweep_epochs, "test": ctx.epochs}
        self.workdir, self.num_threads, self.progress = ctx.workdir, ctx.num_threads, ctx.progress
        device, int8 = ctx.device, ctx.int8
        data = recipe.dataset or fashion_mnist_splits(recipe.train_size, recipe.test_size)
        self.data_name, self.num_classes = data.name, data.num_classes
        digest = hashlib.sha256()
        for t in (data.train_images, data.train_labels, data.test_images, data.test_labels):
            digest.update(t.contiguous().cpu().numpy().tobytes())
        self.data_sha256 = digest.hexdigest()
        n = len(data.train_images)
        n_val = round(n * recipe.val_fraction)
        if not 1 <= n_val <= n - 2:
            raise ValueError(
                f"recipe.val_fraction={recipe.val_fraction} of {n} training images leaves no validation "
                "image or fewer than 2 to train on"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # fixed split, every run
        fit_i, val_i = order[: n - n_val], order[n - n_val :]
        images, test = _nchw(data.train_images), _nchw(data.test_images)
        train = images[fit_i]
        mean, std = train.mean(), train.std()  # of the training part, applied to every split

        def norm(x: Tensor) -> Tensor:
            return ((x - mean) / std).to(device)

        self.train_x, self.val_x, self.test_x = norm(train), norm(images[val_i]), norm(test)
        labels = data.train_labels.long()
        self.train_y, self.val_y = labels[fit_i].to(device), labels[val_i].to(device)
        self.test_y = data.test_labels.long().to(device)
        self.calibration = self.train_x[: recipe.calib_images].cpu()
        self.memory = PeakMemory(device)
        self.paired = ("top1", "top1 int8", "top1 int8 per-tensor") if int8 else ("top1",)
        self.shown = (
            ("top1", "top1 int8", "int8 drop", "top1 int8 per-tensor", "int8 per-tensor drop")
            if int8
            else ("top1",)
        )
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

    def fingerprint(self) -> dict[str, object]:
        """What makes two runs comparable: every recipe field that changes the numbers, and the data."""
        r = self.recipe
        keep = ("train_size", "test_size", "width", "val_fraction", "batch", "momentum", "weight_decay",
                "warmup_epochs", "calib_images")  # fmt: skip
        return {
            **{k: getattr(r, k) for k in keep},
            "int8": self.int8,  # measured inside each test run
            "data": self.data_name,
            "data sha256": self.data_sha256,
        }

    def describe(self) -> dict[str, object]:
        """The recipe as report rows."""
        r = self.recipe
        widths = "-".join(str(r.width * m) for m, _ in SMALL_CNN_STAGES)
        strides = "-".join(str(s) for _, s in SMALL_CNN_STAGES)
        return {
            "data": f"{self.data_name}: {len(self.train_x)} train images (fixed subset), "
            f"{len(self.val_x)} validation images held out of it (for the rate sweep), "
            f"{len(self.test_x)} test images",
            "model": f"small CNN: 3x3 conv stages of {widths} channels (strides {strides}), GAP, linear",
            "optimizer": f"SGD nesterov, lr per variant (the sweep's choice), momentum {r.momentum} "
            f"wd {r.weight_decay}, "
            f"batch {r.batch}, warm-up {r.warmup_epochs} epochs then cosine, no augmentation",
            "memory method": self.memory.method or "not available",
            "int8": "onnxruntime quantize_static: QDQ, S8 weights with per-channel and with per-tensor "
            f"scales, U8 activations, MinMax on "
            f"{len(self.calibration)} training images"
            if self.int8
            else "off",
        }

    def _train(
        self, model: nn.Module, seed: int, lr: float, epochs: int
    ) -> tuple[list[float], list[float | None]]:
        r, n = self.recipe, len(self.train_x)
        batch = min(r.batch, n)
        steps = n // batch
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=r.momentum, nesterov=True, weight_decay=r.weight_decay
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(r, steps, epochs))
        gen = torch.Generator().manual_seed(seed)
        times, peaks = [], []
        model.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)[: steps * batch].to(self.device)
            self.memory.start()
            t0 = time.perf_counter()
            for idx in order.split(batch):
                loss = F.cross_entropy(model(self.train_x[idx]), self.train_y[idx])
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"training loss became {loss.item()} (lr {lr} too high for this model?)"
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

    def run(self, variant: str, seed: int, lr: float, phase: str) -> RunRecord:
        """Train ``variant`` with ``seed`` at ``lr``, convert, and measure top-1 of the deploy form: on the
        validation split for a "sweep" run, else on the test images (and INT8 if asked)."""
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = small_cnn(variant, self.recipe.width, self.num_classes, self.train_x.shape[1]).to(self.device)
        times, peaks = self._train(model, seed, lr, self.epochs[phase])
        model.eval()
        sweep = phase == "sweep"
        x, y, prefix = (self.val_x, self.val_y, "val ") if sweep else (self.test_x, self.test_y, "")
        train_logits = _logits(model, x)
        deploy = reparameterize(model)
        deploy_logits = _logits(deploy, x)
        metrics = {
            f"{prefix}top1": _top1(deploy_logits, y),
            f"{prefix}top1 train form": _top1(train_logits, y),
            f"{prefix}deploy max_rel": relative_error(train_logits, deploy_logits)[1],
        }
        if self.int8 and not sweep:
            for per_channel in (True, False):
                metrics.update(self._quantized(variant, seed, deploy, per_channel))
        measured = [p for p in peaks if p is not None]
        peak = sum(measured) / len(measured) if measured else None
        train_s = sum(times) / len(times)
        return RunRecord(variant, seed, metrics, train_s, peak, time.perf_counter() - t0, lr, phase)

    def _quantized(self, variant: str, seed: int, deploy: nn.Module, per_channel: bool) -> dict[str, float]:
        from reparam.bench.int8 import logit_agreement, quantize_model

        scales = "" if per_channel else " per-tensor"
        q = quantize_model(
            copy.deepcopy(deploy).cpu(),
            self.calibration,
            self.workdir,
            f"{variant}-seed{seed}{'-per-tensor' if scales else ''}",
            threads=self.num_threads,
            per_channel=per_channel,
        )
        test_x = self.test_x.cpu()
        fp32, int8 = _logits(q.fp32, test_x), _logits(q.int8, test_x)
        agree, cosine = logit_agreement(fp32, int8)
        top_fp32, top_int8 = _top1(fp32, self.test_y), _top1(int8, self.test_y)
        return {
            "top1 ort fp32": top_fp32,
            f"top1 int8{scales}": top_int8,
            f"int8{scales} drop": top_fp32 - top_int8,
            f"int8{scales} agreement": 100.0 * agree,
            f"int8{scales} cosine": cosine,
        }

    def _quantize_form(self, variant: str, form: nn.Module) -> Any:
        from reparam.bench.int8 import quantize_model

        return quantize_model(
            copy.deepcopy(form).cpu(), self.calibration, self.workdir, f"{variant}-latency", self.num_threads
        )

    def profile(self, variants: Sequence[str]) -> dict[str, VariantProfile]:
        """Params, GFLOPs and interleaved latency of each variant's deploy form (PyTorch; ORT if INT8).

        The forms are built afresh (seed 0, converted untrained): latency and cost depend on the
        architecture, not on the trained values, and a resumed study measures the same forms.
        """
        shape = tuple(self.test_x.shape[1:])
        forms = {}
        for v in variants:
            torch.manual_seed(0)
            model = small_cnn(v, self.recipe.width, self.num_classes, shape[0]).eval()
            forms[v] = reparameterize(model).to(self.device)
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
        onnx: dict[str, Any] = {}
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
                if not onnx:
                    onnx = {v: self._quantize_form(v, m) for v, m in forms.items()}
                runners = {
                    f"{v} {k}": getattr(onnx[v], k).runner(x) for v in variants for k in ("fp32", "int8")
                }
                timed = compare_latency(runners, x, rounds=self.recipe.latency_rounds, calls_per_round=calls)
                for v in variants:
                    for k in ("fp32", "int8"):
                        profiles[v].latency[f"ort {k} b{b}"] = timed[f"{v} {k}"]
        return profiles
