"""INT8 post-training quantization of a deploy form with onnxruntime, and its accuracy and speed there.

The deploy form is exported to ONNX (legacy exporter, opset 17, dynamic batch), then quantized statically
(``onnxruntime.quantization.quantize_static``: QDQ format, INT8 weights per output channel, UINT8
activations, MinMax ranges calibrated on real training images), so the quantized model is what a user
would ship to an INT8 runtime. Needs the ``export`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reparam.checks import strict_bools

__all__ = [
    "ONNX_OPSET",
    "Int8Models",
    "OrtModel",
    "export_onnx",
    "logit_agreement",
    "quantize_int8",
    "quantize_model",
]

ONNX_OPSET = 17
_INPUT, _OUTPUT = "images", "logits"


def export_onnx(model: nn.Module, example: Tensor, path: Path, opset: int = ONNX_OPSET) -> Path:
    """Export ``model`` (eval mode, CPU) to ``path``: input "images", output "logits", dynamic batch."""
    model = model.eval().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (example.cpu(),),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[_INPUT],
        output_names=[_OUTPUT],
        dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
    )
    return path


def _calibration_reader(images: Tensor, batch: int) -> Any:
    """A ``CalibrationDataReader`` that feeds ``images`` (already normalized) in batches of ``batch``."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[Tensor] = iter(images.split(batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._batches, None)
            return None if x is None else {_INPUT: x.cpu().float().numpy()}

    return _Reader()


@strict_bools
def quantize_int8(
    onnx_path: Path, out_path: Path, calibration: Tensor, per_channel: bool = True, batch: int = 32
) -> Path:
    """Static INT8 quantization (QDQ, S8 weights, U8 activations, MinMax) of ``onnx_path`` to ``out_path``.

    ``calibration`` is a batch of model inputs (real training images, normalized like the model's input).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calibration.ndim < 2 or calibration.shape[0] < 1:
        raise ValueError(f"calibration must hold at least one input, got shape {tuple(calibration.shape)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    quantize_static(
        str(onnx_path),
        str(out_path),
        _calibration_reader(calibration, batch),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out_path


class OrtModel:
    """An onnxruntime CPU session called like a model: float tensor in, logits tensor out."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: Tensor) -> Tensor:
        (out,) = self.session.run([_OUTPUT], {_INPUT: x.detach().cpu().float().numpy()})
        return torch.from_numpy(out)

    def runner(self, x: Tensor) -> Any:
        """A callable that runs the session on a fixed, pre-converted ``x`` (for latency timing)."""
        feed = {_INPUT: x.detach().cpu().float().numpy()}
        return lambda _unused: self.session.run([_OUTPUT], feed)


@dataclass
class Int8Models:
    """The fp32 ONNX export of a deploy form and its INT8 quantization, both loaded in onnxruntime."""

    fp32: OrtModel
    int8: OrtModel


@strict_bools
def quantize_model(
    model: nn.Module, calibration: Tensor, folder: Path, name: str, threads: int = 1, per_channel: bool = True
) -> Int8Models:
    """Export ``model`` to ``folder/name.onnx``, quantize it to ``folder/name-int8.onnx``, load both."""
    fp32 = export_onnx(model, calibration[:1], folder / f"{name}.onnx")
    int8 = quantize_int8(fp32, folder / f"{name}-int8.onnx", calibration, per_channel=per_channel)
    return Int8Models(OrtModel(fp32, threads), OrtModel(int8, threads))


def logit_agreement(reference: Tensor, other: Tensor) -> tuple[float, float]:
    """(top-1 agreement, mean cosine similarity) between two ``(N, classes)`` logit tensors."""
    if reference.shape != other.shape or reference.ndim != 2:
        raise ValueError(
            f"logits must be two (N, classes) tensors of one shape, got {reference.shape}, {other.shape}"
        )
    agree = (reference.argmax(1) == other.argmax(1)).double().mean().item()
    cosine = torch.nn.functional.cosine_similarity(reference.double(), other.double(), dim=1).mean().item()
    return agree, cosine
