"""Which optional extra provides a module: a command that needs one says so in one line (CLI exit 2).

The core install (``pip install reparam``: torch and numpy) holds the blocks, the conversion, verification,
the benchmarks' measuring code and the classification study; Ultralytics, ONNX and timm come with extras.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA_OF", "MissingExtraError", "missing_extra", "require"]

EXTRA_OF: dict[str, str] = {
    "ultralytics": "yolo",
    "yaml": "yolo",
    "PIL": "yolo",
    "cv2": "yolo",
    "matplotlib": "yolo",
    "cloudpickle": "yolo",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxslim": "export",
    "timm": "bench",
}
"""Top-level module -> the extra of ``pyproject.toml`` that installs it."""


class MissingExtraError(ModuleNotFoundError):
    """An optional module is missing; the message names the extra that installs it."""


def missing_extra(error: ModuleNotFoundError) -> MissingExtraError | None:
    """``error`` as a one-line "needs the <extra> extra" error when the missing module belongs to an extra,
    else None (a missing module no extra provides is a bug, not bad input)."""
    top = (error.name or "").partition(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return MissingExtraError(
        f'needs the {extra} extra: pip install "reparam[{extra}]" (no module named {top!r})', name=top
    )


def require(*modules: str) -> None:
    """ModuleNotFoundError for the first of ``modules`` that is not installed: a check before long work
    (the INT8 study trains for minutes before it first imports onnx)."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
