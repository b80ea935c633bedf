"""``reparam train``: Ultralytics training with reparam's trainer; default data: the DeepForest set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reparam.app.data import resolve_data
from reparam.app.fonts import plot_fonts
from reparam.app.models import check_checkpoint, load, stride_imgsz
from reparam.text import Progress
from reparam.yolo.safety import ultralytics_safe_load
from reparam.yolo.trainer import TrainResult, train_detector

__all__ = ["TrainResult", "train"]

_CHECKPOINT_KEYS = ("resume", "pretrained")  # Ultralytics train keys that may name a checkpoint to read


def train(
    model: str,
    data: str | Path | None = None,
    epochs: int = 25,
    imgsz: int = 320,
    batch: int = 16,
    device: str = "cpu",
    project: str | Path = "runs/reparam",
    name: str = "train",
    progress: Progress | None = None,
    trust: bool = False,
    **overrides: Any,
) -> TrainResult:
    """Ultralytics training with reparam's trainer (``ReparamDetectionTrainer``); default data: DeepForest.

    Plots find their font locally (:func:`reparam.app.fonts.plot_fonts`); ``imgsz`` is rounded up to the
    stride. Every checkpoint it reads (``model``, a ``resume=`` or ``pretrained=`` path, and what Ultralytics
    reloads during and after training) is read without running code from it unless ``trust=True``.
    """
    imgsz = stride_imgsz(imgsz)
    for key in _CHECKPOINT_KEYS:  # every file is checked before any work (data preparation, training)
        if isinstance(overrides.get(key), str | Path):
            check_checkpoint(overrides[key], trust=trust)
    net = load(model, trust=trust)
    data_yaml, _ = resolve_data(data, progress=progress)
    with plot_fonts(), ultralytics_safe_load(trust):
        return train_detector(
            net,
            data_yaml,
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            device=device,
            project=str(Path(project).resolve()),
            name=name,
            **overrides,
        )
