"""The detection trainer whose module path Ultralytics' multi-GPU (DDP) script imports.

Ultralytics runs DDP training in a generated script in fresh processes that import the trainer class
by ``trainer.__class__.__module__``. Importing this module first runs the package ``reparam.yolo``, which
registers every block and hook, so the YAML parse and checkpoint loads in each worker know reparam.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultralytics.models.yolo.detect import DetectionTrainer

__all__ = ["ReparamDetectionTrainer", "TrainResult", "train_detector"]


@dataclass
class TrainResult:
    """Where a training run wrote its outputs."""

    save_dir: Path
    best: Path
    last: Path
    results_csv: Path
    data: Path


class ReparamDetectionTrainer(DetectionTrainer):
    """Ultralytics' DetectionTrainer; importing it (also in DDP workers) registers reparam's blocks."""


def train_detector(net: Any, data_yaml: Path, **settings: Any) -> TrainResult:
    """``net.train`` (an Ultralytics ``YOLO``) with :class:`ReparamDetectionTrainer` on ``data_yaml``;
    ``settings`` are Ultralytics' train keys. Shared by ``reparam train`` and the detection study."""
    net.train(data=str(data_yaml), trainer=ReparamDetectionTrainer, **settings)
    save_dir = Path(net.trainer.save_dir)
    weights = save_dir / "weights"
    return TrainResult(
        save_dir, weights / "best.pt", weights / "last.pt", save_dir / "results.csv", data_yaml
    )
