"""Helpers the test files share: the dtype tolerances, the error measure, the parameter count.

The error measure is the library's one (:func:`reparam.verification.relative_error`), so a NaN or Inf output
never passes a tolerance; random BN statistics come from :func:`reparam.convert.randomize_bn_`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reparam.verification import relative_error

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
"""Max relative error of an exact conversion, by compute dtype."""


def rel_err(got: Tensor, ref: Tensor) -> float:
    """max|got - ref| / max|ref| (inf when either holds a NaN/Inf or the shapes differ)."""
    return relative_error(ref, got)[1]


def n_params(model: nn.Module) -> int:
    """Number of parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())
