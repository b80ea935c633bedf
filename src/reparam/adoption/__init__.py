"""Adoption: turn a trained model's Conv2d(+BN)(+act) layers into re-parameterizable blocks that start as the
exact same function (``adopt``), so fine-tuning begins from the trained weights."""

from reparam.adoption.api import adopt
from reparam.adoption.report import AdoptCheckError, AdoptedLayer, AdoptReport, SkippedLayer
from reparam.adoption.units import FAMILIES

__all__ = ["FAMILIES", "AdoptCheckError", "AdoptReport", "AdoptedLayer", "SkippedLayer", "adopt"]
