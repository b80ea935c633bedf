"""``reparam verify``: training vs converted form of an Ultralytics model, per block and end to end."""

from __future__ import annotations

from pathlib import Path

import torch

from reparam.app.models import load, stride_imgsz
from reparam.checks import strict_bools
from reparam.verification import VerifyReport, verify

__all__ = ["verify_model"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@strict_bools
def verify_model(
    model: str | Path,
    imgsz: int = 320,
    batch: int = 1,
    dtype: str = "float32",
    randomize_bn: bool = False,
    rtol: float | None = None,
    per_block: bool = True,
    *,
    trust: bool = False,
) -> VerifyReport:
    """:func:`reparam.verify` on an Ultralytics model: training vs converted form on a random input.

    A ``.pt`` model is read without running code from it unless ``trust=True`` (see :func:`load`)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    imgsz = stride_imgsz(imgsz)
    net = load(model, trust=trust).model.float().eval()
    return verify(
        net,
        input_shape=(batch, 3, imgsz, imgsz),
        dtype=_DTYPES[dtype],
        randomize_bn=randomize_bn,
        rtol=rtol,
        per_block=per_block,
    )
