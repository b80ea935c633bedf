"""The detection trainer whose module path Ultralytics' multi-GPU (DDP) script imports.

Ultralytics runs DDP training in a generated script in fresh processes that import the trainer class
by ``trainer.__class__.__module__``. Importing this module first runs the package ``reparam.yolo``, which
registers every block and hook, so the YAML parse and checkpoint loads in each worker know reparam.
"""

from __future__ import annotations

from ultralytics.models.yolo.detect import DetectionTrainer

__all__ = ["ReparamDetectionTrainer"]


class ReparamDetectionTrainer(DetectionTrainer):
    """Ultralytics' DetectionTrainer; importing it (also in DDP workers) registers reparam's blocks."""
