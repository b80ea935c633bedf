"""Whole networks built from reparam blocks, in plain PyTorch (no Ultralytics needed)."""

from reparam.models.yolov6 import (
    VARIANTS,
    EfficientRep,
    RepPANNeck,
    YOLOv6Variant,
    efficientrep_backbone,
    reppan_neck,
)

__all__ = ["VARIANTS", "EfficientRep", "RepPANNeck", "YOLOv6Variant", "efficientrep_backbone", "reppan_neck"]
