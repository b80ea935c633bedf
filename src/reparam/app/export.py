"""``reparam export``: convert and export through Ultralytics; ONNX files are checked in onnxruntime."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from reparam.app.models import first_tensor, load, stride_imgsz
from reparam.checks import strict_bools
from reparam.io import OverwriteRefusedError
from reparam.verification import relative_error
from reparam.yolo import convert_model
from reparam.yolo.safety import ultralytics_safe_load

__all__ = [
    "ONNX_RTOL",
    "ExportResult",
    "OnnxCheck",
    "check_onnx",
    "export_model",
    "export_onnx",
    "export_target",
    "onnx_ops",
]

ONNX_RTOL = 1e-4
"""ONNX Runtime output vs the PyTorch deploy form (fp32): max |difference| / max |output|."""


@dataclass
class OnnxCheck:
    """ONNX Runtime vs the PyTorch deploy form, and the graph's op types."""

    max_abs: float
    max_rel: float
    ops: Counter[str]

    @property
    def ok(self) -> bool:
        """Within :data:`ONNX_RTOL`."""
        return self.max_rel <= ONNX_RTOL


@dataclass
class ExportResult:
    """An exported file and, for ONNX, its onnxruntime check."""

    path: Path
    format: str
    check: OnnxCheck | None = None

    def summary(self) -> str:
        """One line per fact."""
        lines = [f"exported {self.format}: {self.path}"]
        if self.check is not None:
            c = self.check
            lines.append(
                f"onnxruntime vs PyTorch deploy form: max_abs={c.max_abs:.3e} max_rel={c.max_rel:.3e} "
                f"({'PASS' if c.ok else 'FAIL'}, rtol {ONNX_RTOL:.0e})"
            )
            lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(c.ops.items())))
        return "\n".join(lines)


def onnx_ops(path: Path) -> Counter[str]:
    """Op types of an ONNX graph and how often each occurs, ``Identity`` no-ops excluded.

    The exporter emits ``Identity`` nodes for initializers that happen to be equal (e.g. the all-zero
    biases of an untrained model), so they say nothing about the architecture.
    """
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.op_type != "Identity")


@torch.no_grad()
def check_onnx(path: Path, reference: nn.Module, x: Tensor) -> OnnxCheck:
    """Run ``path`` in onnxruntime on ``x`` and compare with ``reference(x)``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    want = first_tensor(reference.float().eval()(x))
    if got.shape != want.shape:
        raise RuntimeError(f"ONNX output shape {tuple(got.shape)} differs from PyTorch {tuple(want.shape)}")
    return OnnxCheck(*relative_error(want, got), onnx_ops(path))


def export_target(model: str | Path, format: str) -> Path:
    """Where Ultralytics writes the export of ``model``: next to a ``.pt`` file, in the working folder for
    a YAML (named after it), with the format's suffix (a file such as ``.onnx`` or a ``_<fmt>_model`` folder).
    ``format`` is one of the ``Argument`` names of Ultralytics' export table (aliases are not accepted).
    """
    from ultralytics.engine.exporter import export_formats

    table = export_formats()
    formats = dict(zip(table["Argument"], table["Suffix"], strict=True))
    formats.pop("-", None)  # the PyTorch row: not an export target
    if format.lower() not in formats:
        valid = ", ".join(formats)
        raise ValueError(f"format={format!r} is not an Ultralytics export format; one of: {valid}")
    path = Path(model)
    base = path if path.suffix.lower() == ".pt" else Path(path.name)
    suffix = formats[format.lower()]
    return base.with_suffix(suffix) if suffix.startswith(".") else base.with_name(base.stem + suffix)


def _refuse_existing(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise OverwriteRefusedError(f"{str(target)!r} already exists; pass overwrite=True to replace it")


@strict_bools
def export_onnx(model: str | Path, imgsz: int, *, overwrite: bool = False, trust: bool = False) -> Path:
    """Export ``model`` to ONNX through Ultralytics (converted by its fuse()), not simplified; an existing
    ONNX file is refused unless ``overwrite=True``, a ``.pt`` is read as :func:`load` reads it."""
    _refuse_existing(export_target(model, "onnx"), overwrite)
    net = load(model, trust=trust)
    with ultralytics_safe_load(trust):
        return Path(net.export(format="onnx", imgsz=imgsz, simplify=False, device="cpu"))


@strict_bools
def export_model(
    model: str | Path,
    format: str = "onnx",
    imgsz: int = 320,
    dynamic: bool = False,
    opset: int | None = None,
    check: bool = True,
    *,
    overwrite: bool = False,
    trust: bool = False,
) -> ExportResult:
    """Convert and export through Ultralytics (its fuse() converts reparam blocks); checks ONNX files.

    The target (:func:`export_target`) is refused if it exists unless ``overwrite=True``; a ``.pt`` model is
    read without running code from it unless ``trust=True``. ONNX graphs are not simplified (onnxslim is not
    a dependency and would be fetched at run time).
    """
    imgsz = stride_imgsz(imgsz)
    _refuse_existing(export_target(model, format), overwrite)
    net = load(model, trust=trust)
    with ultralytics_safe_load(trust):
        path = Path(
            net.export(format=format, imgsz=imgsz, dynamic=dynamic, opset=opset, simplify=False, device="cpu")
        )
    result = ExportResult(path, format)
    if format.lower() == "onnx" and check:
        x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
        result.check = check_onnx(path, convert_model(copy.deepcopy(net.model).float().eval()), x)
    return result
