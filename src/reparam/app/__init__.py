"""The application layer: one module per ``reparam`` command, each a plain library function.

``cli.py`` only parses arguments and calls these. Heavy imports (torch, Ultralytics) happen on first use.
"""

from reparam.app.adopt import adopt
from reparam.app.bench import run_bench
from reparam.app.data import prepare_data, resolve_data
from reparam.app.demo import MAP_TOL, MAP_TOL_FP16, DemoResult, run_demo
from reparam.app.deploy import deploy
from reparam.app.export import (
    ONNX_RTOL,
    ExportResult,
    OnnxCheck,
    check_onnx,
    export_model,
    export_target,
    onnx_ops,
)
from reparam.app.fonts import plot_fonts
from reparam.app.info import describe
from reparam.app.models import blocks_used, check_checkpoint, load, model_forms, plain_model, stride_imgsz
from reparam.app.study import study
from reparam.app.train import TrainResult, train
from reparam.app.verify import verify_model

__all__ = [
    "MAP_TOL",
    "MAP_TOL_FP16",
    "ONNX_RTOL",
    "DemoResult",
    "ExportResult",
    "OnnxCheck",
    "TrainResult",
    "adopt",
    "blocks_used",
    "check_checkpoint",
    "check_onnx",
    "deploy",
    "describe",
    "export_model",
    "export_target",
    "load",
    "model_forms",
    "onnx_ops",
    "plain_model",
    "plot_fonts",
    "prepare_data",
    "resolve_data",
    "run_bench",
    "run_demo",
    "stride_imgsz",
    "study",
    "train",
    "verify_model",
]
