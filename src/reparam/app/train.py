"""``reparam train``: Ultralytics training with reparam's trainer; default data: the DeepForest set."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from ultralytics import YOLO

from reparam.app.data import resolve_data
from reparam.app.models import checked_preload, load, stride_imgsz
from reparam.blocks.base import check_positive
from reparam.checks import strict_bools
from reparam.io import check_folder, check_path
from reparam.text import Progress
from reparam.yolo.fonts import plot_fonts
from reparam.yolo.safety import ultralytics_safe_load
from reparam.yolo.trainer import TrainResult, train_detector

__all__ = ["TrainResult", "train", "use_threads"]

_CHECKPOINT_KEYS = ("resume", "pretrained")  # Ultralytics train keys that may name a checkpoint to read


def use_threads(net: YOLO, threads: int) -> None:
    """Make Ultralytics train and validate ``net`` on ``threads`` torch CPU threads.

    Why: its ``select_device`` sets ``cpu_count - 1`` threads (one on a 2-core machine) before every
    training and validation; these callbacks run right after it and set ``threads`` instead.
    """
    check_positive(threads=threads)

    def set_threads(_: object) -> None:
        torch.set_num_threads(threads)

    for event in ("on_pretrain_routine_start", "on_val_start"):
        net.add_callback(event, set_threads)


@strict_bools
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
    threads: int | None = None,
    **overrides: Any,
) -> TrainResult:
    """Ultralytics training with reparam's trainer (``ReparamDetectionTrainer``); default data: DeepForest.

    Plots find their font locally (:func:`reparam.yolo.fonts.plot_fonts`); ``imgsz`` is rounded up to the
    stride. ``threads`` sets the torch CPU threads of training and its validation (None: Ultralytics'
    choice, ``cpu_count - 1``; see :func:`use_threads`). Every checkpoint it reads (``model``, a
    ``resume=`` or ``pretrained=`` path, and what Ultralytics reloads during and after training) is read
    without running code from it unless ``trust=True``.
    """
    imgsz, project = stride_imgsz(imgsz), check_folder("project", project, "the training runs")
    preloads = []  # every file is checked before any work (data preparation, training)
    for key in _CHECKPOINT_KEYS:
        if isinstance(overrides.get(key), str | Path):
            preloads.append(checked_preload(check_path(key, overrides[key]), trust=trust))
    net = load(model, trust=trust)
    if threads is not None:
        use_threads(net, threads)
    data_yaml, _ = resolve_data(data, progress=progress)
    with plot_fonts(), ultralytics_safe_load(trust), contextlib.ExitStack() as stack:
        for preload in preloads:
            stack.enter_context(preload)
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
