"""Ultralytics' GFLOPs count the real work of OREPA and DynamicConv training forms (issue 12 item 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops

import reparam.yolo  # noqa: F401  (registers blocks and patches thop)
from reparam.bench.macs import orepa_generation_macs
from reparam.blocks import OREPA, DynamicConv, OREPA_1x1, OREPA_LargeConv, OREPARepVGG


def _thop_macs(model: nn.Module, x: torch.Tensor) -> float:
    import thop

    return thop.profile(model, inputs=[x], verbose=False)[0]


def _torch_conv_mm_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of every conv and matrix product that PyTorch itself executes (an independent counter)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(
    "block",
    [
        lambda: OREPA(8, 16, 3, 2),
        lambda: OREPA(8, 8, 3, 1, g=2),
        lambda: OREPA_1x1(32, 32, 1),
        lambda: OREPA_LargeConv(4, 8, 5),
        lambda: OREPARepVGG(8, 8, 3),
    ],
    ids=["orepa-s2", "orepa-g2", "orepa-1x1", "orepa-large", "orepa-repvgg"],
)
def test_orepa_training_macs_cover_conv_and_generation(block):
    torch.manual_seed(0)
    m = block().eval()
    x = torch.randn(1, m.c1, 16, 16)
    y = m(x)
    conv = y.numel() * (m.c1 // m.g) * m.k * m.k
    bn_and_act = _thop_macs(m, x) - conv - orepa_generation_macs(m)
    # what remains is thop's own per-element count of BNs, activation and sums (a few ops per element, far
    # below one conv's share), plus OREPARepVGG's 1x1 branch, which is a hooked nn.Conv2d
    extra_1x1 = y.numel() * (m.c1 // m.g) if isinstance(m, OREPARepVGG) else 0
    assert 0 <= bn_and_act - extra_1x1 <= 12 * (y.numel() + x.numel()) < conv
    m.reparameterize()
    assert _thop_macs(m, x) == pytest.approx(conv + y.numel(), abs=4 * y.numel())


def test_dynamic_conv_macs_match_torch_counter():
    torch.manual_seed(0)
    m = DynamicConv(8, 16, 3, 1, num_experts=4).eval()
    x = torch.randn(1, 8, 16, 16)
    thop_macs = _thop_macs(m, x)
    torch_macs = _torch_conv_mm_macs(m, x)  # conv + router + aggregation (no pooling)
    assert torch_macs <= thop_macs <= torch_macs + x.numel()


def test_ultralytics_gflops_see_orepa_and_dynamicconv():
    plain = get_flops(DetectionModel("yolov8n.yaml", nc=2, verbose=False), 320)
    orepa = DetectionModel("yolov8n-orepa.yaml", nc=2, verbose=False)
    generation = sum(orepa_generation_macs(m) for m in orepa.modules() if isinstance(m, OREPA))
    # the training form does the plain model's convolutions plus one kernel generation per block
    assert get_flops(orepa, 320) == pytest.approx(plain + 2 * generation / 1e9, rel=1e-3)
    dyn = DetectionModel("yolov8n-c2f-dynamicconv.yaml", nc=2, verbose=False)
    assert get_flops(dyn, 320) > plain
    orepa.eval().fuse(verbose=False)
    fused_plain = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval().fuse(verbose=False)
    assert get_flops(orepa, 320) == pytest.approx(get_flops(fused_plain, 320), rel=1e-9)
