"""Ultralytics' GFLOPs count the real work of OREPA and DynamicConv training forms (issue 12 item 4)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, bmm_flop
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


# PyTorch's counter knows the out-of-place products only; OREPA's generation accumulates in place
# (baddbmm_, addcmul_) and OREPA_1x1 adds its origin with addcmul: count those with PyTorch's own bmm
# formula and one multiply-add per output element.
_IN_PLACE = {
    torch.ops.aten.baddbmm_: lambda acc, a, b, *_, out_shape=None, **__: bmm_flop(a, b),
    torch.ops.aten.addcmul_: lambda acc, *_, out_shape=None, **__: 2 * math.prod(acc),
    torch.ops.aten.addcmul: lambda acc, *_, out_shape=None, **__: 2 * math.prod(out_shape),
}


def _torch_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of every conv, matrix product and multiply-add PyTorch executes in ``model(x)`` (BN excluded)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_IN_PLACE) as counter:
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
def test_orepa_training_macs_are_what_torch_executes_plus_what_thop_counts_for_bn_and_act(block):
    torch.manual_seed(0)
    m = block().eval()
    x = torch.randn(1, m.c1, 16, 16)
    y = m(x)
    # what thop counts for the stock counterpart's BN and activation (a Conv's bn and act), on y's shape
    norms = [c for c in m.modules() if isinstance(c, nn.BatchNorm2d | nn.SiLU | nn.ReLU)]
    bn_and_act = sum(_thop_macs(copy.deepcopy(c), torch.zeros_like(y)) for c in norms)
    assert _thop_macs(m, x) == _torch_macs(m, x) + bn_and_act
    # and the generation itself: all of torch's count beyond the convolution(s) the block runs on x
    # (OREPA_LargeConv's kernel composition is a convolution too, so it stays in)
    conv_on_x = y.numel() * (m.c1 // m.g) * (m.k * m.k + isinstance(m, OREPARepVGG))  # + its 1x1 branch
    generation = _torch_macs(m, x) - conv_on_x
    assert generation > 0 and orepa_generation_macs(m) == generation
    m.reparameterize()
    assert _thop_macs(m, x) == pytest.approx(_torch_macs(m, x) + y.numel(), abs=4 * y.numel())


def test_dynamic_conv_macs_match_torch_counter():
    torch.manual_seed(0)
    m = DynamicConv(8, 16, 3, 1, num_experts=4).eval()
    x = torch.randn(1, 8, 16, 16)
    # conv + router + aggregation from PyTorch's counter, plus the global average pool (one add per input)
    assert _thop_macs(m, x) == _torch_conv_mm_macs(m, x) + x.numel()


def test_yolov10n_dynamicconv_gflops_are_yolov10n_s_plus_routing_minus_the_bns_the_variant_drops():
    """Variant 1 replaces three Conv rows (conv + BN + SiLU) by a bare DynamicConv (no BN, no act, as
    the zoo YAML says), so its GFLOPs are yolov10n's minus those BNs plus the routing work: lower here."""
    plain = DetectionModel("yolov10n.yaml", nc=2, verbose=False).eval()
    dyn = DetectionModel("yolov10n-dynamicconv.yaml", nc=2, verbose=False).eval()
    rows = [i for i, m in enumerate(dyn.model) if isinstance(m, DynamicConv)]
    assert rows == [1, 3, 17]
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        dyn.model[i].register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0])) for i in rows
    ]
    with torch.no_grad():
        dyn(torch.zeros(1, 3, 320, 320))
    for h in hooks:
        h.remove()
    expected = 0
    for i in rows:
        x = inputs[i]
        stock = plain.model[i]
        y = stock.conv(x)
        dynamic = _torch_conv_mm_macs(dyn.model[i], x) + x.numel()  # conv, router, aggregation, pool
        assert dynamic > _torch_conv_mm_macs(stock.conv, x)  # more work than the conv it stands for
        expected += dynamic - _torch_conv_mm_macs(stock.conv, x) - _thop_macs(copy.deepcopy(stock.bn), y)
    gap = get_flops(dyn, 320) - get_flops(plain, 320)
    assert gap == pytest.approx(2 * expected / 1e9, rel=1e-6, abs=1e-9)
    assert gap < 0  # the dropped BNs outweigh the routing


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
