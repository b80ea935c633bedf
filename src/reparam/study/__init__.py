"""Controlled studies: the same recipe for a plain model and each re-parameterized variant, several seeds.

``run_study("classification", ...)`` trains the small CNN family on Fashion-MNIST; ``run_study("detection",
...)`` trains the YOLOv8n zoo on the default tree-crown data. Every metric is measured on the deploy form
after conversion; ``int8=True`` adds onnxruntime static INT8 quantization. Reports: Markdown, CSV, PNG.
"""

from reparam.study.classification import ClassificationRecipe, ImageSplits, fashion_mnist_splits
from reparam.study.detection import DETECTION_MODELS, DetectionRecipe
from reparam.study.runner import TASKS, RunRecord, StudyResult, VariantProfile, run_study

__all__ = [
    "DETECTION_MODELS",
    "TASKS",
    "ClassificationRecipe",
    "DetectionRecipe",
    "ImageSplits",
    "RunRecord",
    "StudyResult",
    "VariantProfile",
    "fashion_mnist_splits",
    "run_study",
]
