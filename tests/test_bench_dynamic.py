"""bench.dynamic's equality check before timing uses the one error measure: a NaN output never passes."""

from __future__ import annotations

import pytest
import torch

from reparam.bench.dynamic import LayerShape, compare_dynamic_latency
from reparam.blocks.dynamic import DynamicConv

pytest.importorskip("timm")  # the CondConv reference layer (bench extra)

LAYER = LayerShape(4, 8, 3, 1, 8)


def test_same_weights_give_the_reference_output_and_are_timed() -> None:
    rows = compare_dynamic_latency([LAYER], batches=(2,), rounds=1)
    assert len(rows) == 1


def test_a_nan_output_is_refused_before_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    forward = DynamicConv.forward
    monkeypatch.setattr(DynamicConv, "forward", lambda self, x: forward(self, x) * torch.nan)
    with pytest.raises(RuntimeError, match=r"output differs from timm's \(inf\)"):
        compare_dynamic_latency([LAYER], batches=(2,), rounds=1)
