"""Detection study task: plain YOLOv8n vs the reparam zoo on the default tree-crown data (Ultralytics).

Training goes through an injectable ``train_fn`` (default: :func:`train_zoo_model`, Ultralytics with
reparam's trainer, ``reparam.yolo.train_detector``) with SGD at the run's ``lr0`` and ``nbs=batch`` (one
optimizer step per batch: Ultralytics' ``nbs=64`` would step ~1.5 times per epoch on the ~94 training
tiles). The learning-rate sweep trains on the training images minus a fixed held-out fifth and picks by
that fifth's mAP50-95; the test runs train on all training images and report the data's val split, which
the sweep never sees. mAP is measured by Ultralytics' validator on the checkpoint converted by
``reparam.yolo.convert_model`` (the deploy form); a block left unconverted is an error naming it.
With ``int8`` each test run gets an "int8" record: its converted checkpoint exported to fp32 ONNX and
quantized by :func:`reparam.yolo.quantize.quantize_detector` (QDQ, per-channel weights, the head's decode in
float, calibrated on the training images), both validated by Ultralytics with ``rect=False`` and batch 1
(as ``reparam val`` does); the files stay in ``out/int8/`` for the latency profile.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reparam.bench.latency import compare_latency
from reparam.bench.profile import count_flops, count_params
from reparam.io import atomic_write_text
from reparam.study.runner import RECORDS_DIR, PeakMemory, RunRecord, StudyContext, VariantProfile
from reparam.text import Progress

__all__ = ["DETECTION_MODELS", "DetectionRecipe", "DetectionStudy", "train_zoo_model"]

SWEEP_HOLDOUT = 0.2
"""Share of the training images held out as the sweep's validation split (fixed, seed 0)."""

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


@dataclass(frozen=True)
class DetectionRecipe:
    """Budget and recipe of the detection study (``data=None``: the default tree-crown data set)."""

    data: str | Path | None = None
    imgsz: int = 320
    batch: int = 16
    workers: int = 0
    latency_rounds: int = 20
    calib_images: int = 128
    """INT8 calibration: this many training images, evenly spread (all of them when there are fewer)."""
    train_fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    """``train_fn(model, data=, epochs=, imgsz=, batch=, device=, project=, name=, **overrides)`` returning
    an object with ``best`` (checkpoint) and ``data`` (data YAML); default :func:`train_zoo_model`."""

    def __post_init__(self) -> None:
        for name in ("imgsz", "batch", "latency_rounds", "calib_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe.{name} must be >= 1, got {getattr(self, name)}")


def _load(model: str | Path) -> Any:
    """A YOLO object for a zoo YAML name or a checkpoint this study wrote, read in Ultralytics' safe mode."""
    from ultralytics import YOLO

    from reparam.yolo.safety import ultralytics_safe_load

    with ultralytics_safe_load(False):
        return YOLO(str(model), verbose=False)


def train_zoo_model(
    model: str,
    data: str | Path | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> Any:
    """Train a zoo model with reparam's trainer on ``data`` (default: the DeepForest tree-crown tiles at
    ``imgsz``); ``settings`` are Ultralytics' train keys. Returns ``reparam.yolo.TrainResult``."""
    from reparam.data.deepforest import prepare_deepforest
    from reparam.yolo.safety import ultralytics_safe_load
    from reparam.yolo.trainer import train_detector

    data_yaml = (
        Path(data) if data is not None else prepare_deepforest(tile=settings["imgsz"], progress=progress).yaml
    )
    with ultralytics_safe_load(False):
        return train_detector(_load(model), data_yaml, **settings)


def holdout_data(data_yaml: Path, folder: Path) -> Path:
    """A data YAML in ``folder`` whose train split is ``data_yaml``'s minus a fixed :data:`SWEEP_HOLDOUT`
    share and whose val split is that share (image lists; Ultralytics finds each label as usual)."""
    import yaml

    cfg = yaml.safe_load(Path(data_yaml).read_text())
    root = Path(cfg.get("path") or Path(data_yaml).parent)
    root = root if root.is_absolute() else (Path(data_yaml).parent / root).resolve()
    train = cfg["train"]
    if not isinstance(train, str) or not (root / train).is_dir():
        raise ValueError(f"{data_yaml}: the sweep needs 'train' to name one image folder, got {train!r}")
    from reparam.yolo.quantize import image_files

    images = image_files(root / train, "data")
    n_val = round(len(images) * SWEEP_HOLDOUT)
    if not 1 <= n_val < len(images):
        raise ValueError(f"{data_yaml}: {len(images)} training images are too few to hold out a sweep split")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).tolist()
    folder.mkdir(parents=True, exist_ok=True)
    lists = {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}
    for split, idx in lists.items():
        text = "".join(f"{images[i].resolve()}\n" for i in idx)
        atomic_write_text(text, folder / f"sweep-{split}.txt", overwrite=True)
    out = {k: v for k, v in cfg.items() if k not in ("path", "train", "val", "test")}
    out.update(path=str(folder.resolve()), train="sweep-train.txt", val="sweep-val.txt")
    yaml_path = folder / "sweep-data.yaml"
    atomic_write_text(yaml.safe_dump(out, sort_keys=False), yaml_path, overwrite=True)
    return yaml_path


class DetectionStudy:
    """Trains one detector per (variant, seed), validates its deploy form, profiles the deploy forms."""

    metric = "mAP50-95"
    shown = ("mAP50-95", "mAP50")
    int8_phase = True

    def __init__(self, recipe: DetectionRecipe, ctx: StudyContext) -> None:
        import reparam.yolo  # noqa: F401  (the yolo extra: missing, it is named before out= gets any file)

        device, int8, out, progress = ctx.device, ctx.int8, ctx.out, ctx.progress
        self.train_fn: Callable[..., Any] = recipe.train_fn or train_zoo_model
        self.out = out
        self.recipe, self.device, self.progress = recipe, device, progress
        self.epochs = {"sweep": ctx.sweep_epochs, "test": ctx.epochs}
        self.runs_dir = (out / "runs").resolve()
        self.memory = PeakMemory(device)
        self.notes: list[str] = []
        self._holdout: Path | None = None
        self.int8 = int8
        self.paired = ("mAP50-95", "mAP50", "mAP50-95 int8") if int8 else ("mAP50-95", "mAP50")
        self.plot_latency = ("torch b1", "ort int8 b1" if int8 else None)
        if int8:
            from reparam.extras import require

            require("onnx", "onnxruntime")  # the export extra: named before any training

    def describe(self) -> dict[str, object]:
        """The recipe as report rows."""
        r = self.recipe
        return {
            "data": str(r.data or "default tree-crown data (DeepForest)"),
            "training": f"Ultralytics via {getattr(self.train_fn, '__module__', '?')}."
            f"{getattr(self.train_fn, '__name__', '?')}, imgsz {r.imgsz}, batch {r.batch}, "
            "deterministic=True; "
            "time per epoch includes Ultralytics' per-epoch validation",
            "optimizer": f"SGD, lr0 per variant (the sweep's choice), nbs={r.batch} (= batch)",
            "sweep split": f"a fixed {SWEEP_HOLDOUT:.0%} of the training images held out (the val split is "
            "reported by the test runs only)",
            "memory method": f"{self.memory.method or 'not available'} (one peak over the training call)",
            "runs folder": str(self.runs_dir),
            **({"int8": self._int8_recipe()} if self.int8 else {}),
        }

    def _int8_recipe(self) -> str:
        return (
            "fp32 ONNX of each test run's converted checkpoint quantized with onnxruntime (QDQ, per-channel "
            f"S8 weights, the head's decode in float), calibrated on {self.recipe.calib_images} training "
            "images; both validated with rect=False, batch 1; files in out/int8/"
        )

    def fingerprint(self) -> dict[str, object]:
        """What makes two runs comparable: the recipe fields that change the trained numbers (not int8 or
        calib_images: INT8 records can be added to a finished study, see ``int8_phase``)."""
        r = self.recipe
        return {"data": str(r.data), "imgsz": r.imgsz, "batch": r.batch, "workers": r.workers}

    def _deploy(self, ckpt: Path) -> Any:
        from reparam.yolo import convert_model, pending_blocks

        net = _load(ckpt)
        convert_model(net.model)
        left = pending_blocks(net.model)
        if left:
            raise RuntimeError(f"{ckpt}: blocks not converted to the deploy form: {', '.join(left)}")
        return net

    def _train(self, variant: str, seed: int, lr: float, data: object, name: str, epochs: int) -> Any:
        r = self.recipe
        return self.train_fn(
            DETECTION_MODELS[variant],
            data=data,
            epochs=epochs,
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
            optimizer="SGD",
            lr0=lr,
            nbs=r.batch,
        )

    def _data_yaml(self) -> Path:
        """The recipe's data YAML (the default tree-crown data prepared once when ``data`` is None)."""
        if self.recipe.data is not None:
            return Path(self.recipe.data)
        from reparam.data.deepforest import prepare_deepforest

        return prepare_deepforest(tile=self.recipe.imgsz, progress=self.progress).yaml

    def run(self, variant: str, seed: int, lr: float, phase: str) -> RunRecord:
        """Train ``variant`` with ``seed`` at ``lr0=lr``, then mAP of the converted checkpoint: on the
        held-out part of the training images for a "sweep" run, else on the data's val split. Phase
        "int8": no training, the INT8 metrics of the test run's checkpoint (:meth:`_int8`)."""
        if phase == "int8":
            return self._int8(variant, seed, lr)
        r = self.recipe
        sweep = phase == "sweep"
        name = f"sweep-{variant}-lr{lr:g}-seed{seed}" if sweep else f"{variant}-seed{seed}"
        data: object = r.data
        if sweep:
            if self._holdout is None:  # written once per study process, read by every sweep run
                self._holdout = holdout_data(self._data_yaml(), self.out / "sweep-data")
            data = self._holdout
        t0 = time.perf_counter()
        self.memory.start()
        result = self._train(variant, seed, lr, data, name, self.epochs[phase])
        peak = self.memory.stop()
        train_s = time.perf_counter() - t0
        net = self._deploy(Path(result.best))
        device = str(self.device)
        m50_95, m50 = self._map(net, result.data, f"{name}-val-deploy", batch=r.batch, device=device)
        prefix = "val " if sweep else ""
        metrics = {f"{prefix}mAP50-95": m50_95, f"{prefix}mAP50": m50}
        seconds = time.perf_counter() - t0
        return RunRecord(variant, seed, metrics, train_s / self.epochs[phase], peak, seconds, lr, phase)

    def _map(self, net: Any, data: object, name: str, **setting: Any) -> tuple[float, float]:
        """mAP50-95 and mAP50 of ``net`` on ``data``'s val split by Ultralytics' validator (run folder
        ``name`` under the study's runs folder; ``setting``: batch, rect, device)."""
        m = net.val(
            data=str(data), imgsz=self.recipe.imgsz, plots=False, verbose=False, project=str(self.runs_dir),
            name=name, exist_ok=True, **setting,
        )  # fmt: skip
        return float(m.box.map), float(m.box.map50)

    def _int8(self, variant: str, seed: int, lr: float) -> RunRecord:
        """The test run's converted checkpoint as fp32 ONNX and INT8 ONNX (``out/int8/<variant>-seed<s>``),
        mAP of both on the val split (``rect=False``, batch 1) and the INT8 drop in mAP50-95."""
        from ultralytics import YOLO

        from reparam.yolo.export import export_atomic
        from reparam.yolo.quantize import (
            activation_type,
            copy_metadata,
            decode_nodes,
            letterbox_images,
            quantize_detector,
            spread,
            training_images,
        )

        r, t0, name = self.recipe, time.perf_counter(), f"{variant}-seed{seed}"
        ckpt = self.runs_dir / name / "weights" / "best.pt"
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"{ckpt} is gone: the int8 record of {name} quantizes that test run's checkpoint; delete "
                f"{RECORDS_DIR}/test-{variant}-lr{lr!r}-seed{seed}.json in out= to train it again"
            )
        net, data = self._deploy(ckpt), self._data_yaml()
        folder = self.out / "int8"
        folder.mkdir(parents=True, exist_ok=True)
        forms = {"ort fp32": folder / f"{name}.onnx", "int8": folder / f"{name}.int8.onnx"}
        with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=folder) as tmp:
            fp32 = export_atomic(
                net,
                Path(tmp) / forms["ort fp32"].name,
                format="onnx",
                imgsz=r.imgsz,
                simplify=False,
                device="cpu",
            )
            images = letterbox_images(spread(training_images(data), r.calib_images), r.imgsz)
            decode = decode_nodes(fp32, f"/model.{len(net.model.model) - 1}/")
            q = quantize_detector(
                fp32, Path(tmp) / forms["int8"].name, images, exclude=decode, activation=activation_type()[0]
            )
            copy_metadata(fp32, q)
            for made, final in ((fp32, forms["ort fp32"]), (q, forms["int8"])):
                os.replace(made, final)
        metrics: dict[str, float] = {}
        for label, path in forms.items():
            metrics[f"mAP50-95 {label}"], metrics[f"mAP50 {label}"] = self._map(
                YOLO(str(path), task="detect"), data, f"{name}-val-{label.replace(' ', '-')}",
                batch=1, rect=False, device="cpu",
            )  # fmt: skip
        metrics["int8 drop"] = metrics["mAP50-95 ort fp32"] - metrics["mAP50-95 int8"]
        return RunRecord(variant, seed, metrics, 0.0, None, time.perf_counter() - t0, lr, "int8")

    def profile(self, variants: Sequence[str]) -> dict[str, VariantProfile]:
        """Params (training YAML, deploy form), GFLOPs and interleaved batch-1 latency of the deploy forms
        (each variant's first trained test run)."""
        forms: dict[str, nn.Module] = {}
        for v in variants:
            best = sorted(self.runs_dir.glob(f"{v}-seed*/weights/best.pt"))
            if not best:
                raise RuntimeError(f"no trained checkpoint of {v} in {self.runs_dir} to profile")
            forms[v] = self._deploy(best[0]).model.float().eval().to(self.device)
        x = torch.zeros(1, 3, self.recipe.imgsz, self.recipe.imgsz, device=self.device)
        profiles = {
            v: VariantProfile(
                v, count_params(_load(DETECTION_MODELS[v]).model), count_params(m), count_flops(m, x) / 1e9
            )
            for v, m in forms.items()
        }
        timed = compare_latency(forms, x, rounds=self.recipe.latency_rounds)
        for v in variants:
            profiles[v].latency["torch b1"] = timed[v]
        if self.int8:
            from reparam.yolo.quantize import ort_call

            xn, calls = x.cpu().numpy(), {}
            for v in variants:  # the first seed's INT8 record made both files
                made = sorted((self.out / "int8").glob(f"{v}-seed*.int8.onnx"))
                if not made:
                    raise RuntimeError(
                        f"no INT8 ONNX of {v} in {self.out / 'int8'} to time; delete "
                        f"{RECORDS_DIR}/int8-{v}-*.json in out= to quantize again"
                    )
                calls[f"{v}|ort fp32 b1"] = ort_call(made[0].with_suffix("").with_suffix(".onnx"), xn)
                calls[f"{v}|ort int8 b1"] = ort_call(made[0], xn)
            rounds = self.recipe.latency_rounds
            for key, t in compare_latency(calls, x, rounds=rounds, calls_per_round=1).items():
                v, label = key.split("|")
                profiles[v].latency[label] = t
        return profiles
