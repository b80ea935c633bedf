"""The application layer: one module per ``reparam`` command, each a plain library function.

``cli.py`` only parses arguments and calls these. Importing this package imports none of them: each name
below is loaded from its module on first use, so a command that needs no extra (``reparam study
task=classification``) never imports Ultralytics, and one that does fails only when it runs.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# public name -> the module (one per command) that defines it
_WHERE = {
    "adopt": "adopt",
    "run_bench": "bench",
    "prepare_data": "data",
    "resolve_data": "data",
    "MAP_TOL": "demo",
    "MAP_TOL_FP16": "demo",
    "DemoResult": "demo",
    "run_demo": "demo",
    "deploy": "deploy",
    "ONNX_RTOL": "export",
    "ExportResult": "export",
    "OnnxCheck": "export",
    "check_onnx": "export",
    "export_model": "export",
    "export_target": "export",
    "onnx_ops": "export",
    "describe": "info",
    "blocks_used": "models",
    "check_checkpoint": "models",
    "load": "models",
    "model_forms": "models",
    "plain_model": "models",
    "stride_imgsz": "models",
    "keep_freed_memory": "memory",
    "study": "study",
    "TrainResult": "train",
    "train": "train",
    "verify_model": "verify",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """``reparam.app.<name>`` imports the command module that defines ``name`` on first use."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'reparam.app' has no attribute {name!r}")
    return getattr(importlib.import_module(f"reparam.app.{module}"), name)


class _App(types.ModuleType):
    """Importing ``reparam.app.train`` (the module) binds it on the package, over the function ``train`` of
    the same name (also adopt, deploy, study): skip that binding, so ``reparam.app.<name>`` stays the function
    as it was when this package imported every command eagerly (``sys.modules`` still holds the module)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (isinstance(value, types.ModuleType) and name in _WHERE):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _App
