"""``reparam export``: convert and export through Ultralytics; ONNX files are checked in onnxruntime."""

from __future__ import annotations

import copy
import importlib.util
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reparam.app.int8 import Int8Result, plan_int8, quantize_onnx
from reparam.app.models import first_tensor, load, stride_imgsz
from reparam.checks import strict_bools
from reparam.io import check_path
from reparam.text import Progress
from reparam.verification import relative_error
from reparam.yolo import convert_model
from reparam.yolo.export import check_target, export_atomic, export_suffix, format_arguments, out_of_space

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
    int8: Int8Result | None = None

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
        if self.int8 is not None:
            lines += self.int8.lines()
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


@strict_bools
def export_target(model: str | Path, format: str, *, int8: bool = False) -> Path:
    """Where ``reparam export`` writes ``model``'s export by default: next to a ``.pt`` file, in the working
    folder for a YAML (named after it), with the format's suffix (a file such as ``.onnx`` or a
    ``_<fmt>_model`` folder; ``_int8_openvino_model`` for OpenVINO INT8). ``format`` is one of the
    ``Argument`` names of Ultralytics' export table (aliases are not accepted)."""
    suffix = export_suffix(format)
    if int8 and format.lower() == "openvino":
        suffix = "_int8" + suffix
    path = Path(model)
    base = path if path.suffix.lower() == ".pt" else Path(path.name)
    return base.with_suffix(suffix) if suffix.startswith(".") else base.with_name(base.stem + suffix)


@strict_bools
def export_onnx(model: str | Path, imgsz: int, *, overwrite: bool = False, trust: bool = False) -> Path:
    """Export ``model`` to ONNX through Ultralytics (converted by its fuse()), not simplified, atomically; an
    existing ONNX file is refused unless ``overwrite=True``, a ``.pt`` is read as :func:`load` reads it."""
    target = check_target(export_target(model, "onnx"), "onnx", overwrite)
    net = load(model, trust=trust)
    return export_atomic(
        net,
        target,
        overwrite=overwrite,
        trust=trust,
        format="onnx",
        imgsz=imgsz,
        simplify=False,
        device="cpu",
    )


def _format_args(fmt: str, dynamic: bool, opset: int | None) -> dict[str, Any]:
    """Only the arguments Ultralytics accepts for ``fmt`` (its validator refuses others with an assert):
    ``simplify=False`` where it applies, ``dynamic``/``opset`` refused by name where they do not."""
    accepted = format_arguments(fmt)
    args: dict[str, Any] = {"format": fmt}
    if "simplify" in accepted:
        args["simplify"] = False
    for key, value, default in (("dynamic", dynamic, False), ("opset", opset, None)):
        if value != default:
            if key not in accepted:
                raise ValueError(
                    f"{key}={value} does not apply to format={fmt} (it takes: {', '.join(accepted)})"
                )
            args[key] = value
    return args


def _check_runtime(fmt: str, int8: bool) -> None:
    """OpenVINO export needs openvino (and nncf for INT8) installed: Ultralytics would pip-install them."""
    for package, needed in (("openvino", fmt == "openvino"), ("nncf", fmt == "openvino" and int8)):
        if needed and importlib.util.find_spec(package) is None:
            what = f"format={fmt}" + (" int8=True" if int8 else "")
            raise ValueError(f"{what} needs the {package} package: pip install {package}")


def _refuse_quantized(model: str | Path) -> None:
    """An already exported or quantized model is not a model to export: one line naming it."""
    path = Path(str(model))
    if path.suffix.lower() == ".onnx":
        quantized = path.is_file() and onnx_ops(path)["QuantizeLinear"] > 0
        what = "already quantized (it has QuantizeLinear nodes)" if quantized else "an exported ONNX file"
        raise ValueError(f"model={model} is {what}; export takes the .pt checkpoint or model YAML")
    if path.is_dir() and path.name.endswith("_openvino_model"):
        raise ValueError(f"model={model} is an exported OpenVINO model; export takes the .pt or YAML")


def _refuse_quantized_modules(net: nn.Module, model: str | Path) -> None:
    for name, m in net.named_modules():
        if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized")) or any(
            t.is_quantized for t in m.parameters(recurse=False)
        ):
            raise ValueError(f"model={model} is already quantized ({name or 'model'}: {type(m).__name__})")


@strict_bools
def export_model(
    model: str | Path,
    format: str = "onnx",
    imgsz: int = 320,
    dynamic: bool = False,
    opset: int | None = None,
    check: bool = True,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    trust: bool = False,
    int8: bool = False,
    calib: str | Path | int | None = None,
    data: str | Path | None = None,
    per_channel: bool = True,
    int8_skip: str | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Convert and export through Ultralytics (its fuse() converts reparam blocks), atomically; checks ONNX.

    The target (``out``, default :func:`export_target`) is refused if it exists unless ``overwrite=True``;
    a ``.pt`` model is read without running code from it unless ``trust=True``. ONNX graphs are not
    simplified (onnxslim would be fetched at run time). ``int8=True`` also writes an INT8 form: for ONNX a
    QDQ file next to the fp32 one (:mod:`reparam.app.int8`: ``calib`` images, ``per_channel``,
    ``int8_skip``), for OpenVINO Ultralytics' NNCF export instead of the fp32 folder. Every argument is
    checked before any work; ``out`` ending in a path separator or naming a directory is refused.
    """
    imgsz = stride_imgsz(imgsz)
    fmt = format.lower()
    check_path("model", model)
    if out is not None:
        check_path("out", out)
    _refuse_quantized(model)
    args = _format_args(fmt, dynamic, opset)
    _check_runtime(fmt, int8)
    target = check_target(out if out is not None else export_target(model, fmt, int8=int8), fmt, overwrite)
    net = load(model, trust=trust)
    _refuse_quantized_modules(net.model, model)
    int8_args = {"calib": calib, "int8_skip": int8_skip, "per_channel": None if per_channel else False}
    plan = plan_int8(net, fmt, target, int8, data, overwrite=overwrite, progress=progress, **int8_args)
    args.update(imgsz=imgsz, device="cpu")
    if plan is not None and fmt == "openvino":
        with plan.openvino_data(net) as ov_args:
            return ExportResult(
                export_atomic(net, target, overwrite=overwrite, trust=trust, **args, **ov_args), fmt
            )
    result = ExportResult(target, fmt)
    if plan is not None:
        with out_of_space(target):
            result.int8 = quantize_onnx(
                net, target, plan, args, per_channel, overwrite=overwrite, trust=trust, progress=progress
            )
    else:
        export_atomic(net, target, overwrite=overwrite, trust=trust, **args)
    if fmt == "onnx" and check:
        x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
        result.check = check_onnx(target, convert_model(copy.deepcopy(net.model).float().eval()), x)
    return result
