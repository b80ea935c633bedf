"""adopt: a trained model's Conv2d(+BN)(+act) layers become re-param blocks computing the same function,
whose every branch trains, and whose deploy form has the original's (BN-folded) architecture."""

import copy
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reparam
from reparam.adoption import FAMILIES, AdoptReport, adopt
from reparam.adoption.units import find_units
from reparam.blocks.dynamic import DynamicConv, DynamicConvBNAct
from reparam.convert import randomize_bn_, reparameterize
from reparam.verification import relative_error

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
STATIC = ("repvgg", "qarepvgg", "dbb", "orepa")


class Conv(nn.Module):
    """Ultralytics ``Conv`` look-alike: conv (no bias) -> bn -> act, with the parse_model attributes."""

    def __init__(self, c1, c2, k=1, s=1, g=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """torchvision ResNet BasicBlock naming: conv1/bn1, conv2/bn2, downsample Sequential(conv, bn)."""

    def __init__(self, c1, c2, s=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c1, c2, 3, s, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c2)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c2, c2, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        down = nn.Sequential(nn.Conv2d(c1, c2, 1, s, bias=False), nn.BatchNorm2d(c2))
        self.downsample = down if s > 1 else None

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + idt)


def small_cnn():
    """A torchvision-style CNN: Conv-BN-ReLU Sequentials (stride 1 and 2), residual blocks, a linear head."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()),
        BasicBlock(8, 8),
        BasicBlock(8, 16, 2),
        nn.Conv2d(16, 16, 3, 1, 1),  # bare conv with bias
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


def yolo_like():
    """Ultralytics-like layers in a Sequential, with parse_model's i/f/type attributes on each."""
    layers = [Conv(3, 8, 3, 2), Conv(8, 16, 3, 2), Conv(16, 16, 1), Conv(16, 16, 3), Conv(16, 32, 3, 2, g=2)]
    for i, m in enumerate(layers):
        m.i, m.f, m.type = i, -1, "ultralytics.nn.modules.conv.Conv"
    return nn.Sequential(*layers)


def _trained(model, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) * 0.3)
    randomize_bn_(model, seed)
    return model.to(dtype).eval()


def _x(shape, dtype, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _same(a, b, x):
    with torch.no_grad():
        return relative_error(a.eval()(x), b.eval()(x))[1]


def _convs(model):
    return [
        (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.groups, m.dilation)
        for m in model.modules()
        if type(m) is nn.Conv2d
    ]


def _fused_param_count(model):
    """Parameters of ``model`` once each adoptable unit's BN is folded into a conv with bias."""
    n = sum(p.numel() for p in model.parameters())
    for u in find_units(model):
        n -= 0 if u.bn is None else u.bn.weight.numel() + u.bn.bias.numel()
        n += 0 if u.conv.bias is not None else u.conv.out_channels
    return n


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("to", FAMILIES)
def test_small_cnn_function_preserved(to, dtype):
    model = _trained(small_cnn(), dtype)
    x = _x((2, 3, 16, 16), dtype)
    new, report = adopt(model, to, input_shape=(2, 3, 16, 16))
    assert isinstance(report, AdoptReport) and report.ok, report
    assert [r.name for r in report.layers] == ["0.0", "1.0", "2.conv1", "2.conv2", "3.conv1", "3.conv2", "4"]
    assert [r.name for r in report.not_selected] == ["3.downsample.0"]  # the 1x1
    assert _same(model, new, x) <= TOL[dtype]
    assert isinstance(new[2].bn1, nn.Identity) and isinstance(model[2].bn1, nn.BatchNorm2d)  # a copy
    assert report.params_before == sum(p.numel() for p in model.parameters())
    assert report.params_after == sum(p.numel() for p in new.parameters()) > report.params_before


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("to", FAMILIES)
def test_ultralytics_like_function_preserved(to, dtype):
    model = _trained(yolo_like(), dtype)
    new, report = adopt(model, to)
    assert report.ok and report.input_shape == (2, 3, 64, 64)
    replaced = [r.name for r in report.layers]
    assert replaced == ["0", "1", "3"]  # 3x3, groups 1; the 1x1 and the grouped 3x3 stay
    assert {r.name: r.reason for r in report.not_selected} == {
        "2": "kernel (1, 1) (default selects 3x3 only)",
        "4": "groups=2 (default selects groups=1 only)",
    }
    assert _same(model, new, _x((2, 3, 32, 32), dtype)) <= TOL[dtype]
    for name in replaced:
        block, old = new[int(name)], model[int(name)]
        assert (block.i, block.f, block.type) == (old.i, old.f, old.type)
        assert isinstance(block.act, nn.SiLU)
        bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(bn.eps == 1e-3 and bn.momentum == 0.03 for bn in bns)


@pytest.mark.parametrize("to", FAMILIES)
def test_the_model_itself_can_be_a_unit(to):
    model = _trained(Conv(4, 8, 3), torch.float64)
    new, report = adopt(model, to)
    assert report.ok and report.layers[0].name == "" and new is not model
    assert _same(model, new, _x((2, 4, 9, 9), torch.float64)) <= 1e-10


@pytest.mark.parametrize("to", STATIC)
def test_round_trip_has_the_original_architecture(to):
    model = _trained(small_cnn(), torch.float64)
    new, _ = adopt(model, to, input_shape=(2, 3, 16, 16))
    deployed = reparameterize(new)
    assert _convs(deployed) == _convs(model)
    assert sum(p.numel() for p in deployed.parameters()) == _fused_param_count(model)
    assert _same(model, deployed, _x((2, 3, 16, 16), torch.float64)) <= 1e-10


def test_round_trip_dynamic_stays_dynamic():
    model = _trained(yolo_like(), torch.float64)
    new, report = adopt(model, "dynamic")
    deployed = reparameterize(new)
    blocks = [m for m in deployed.modules() if isinstance(m, DynamicConvBNAct)]
    assert len(blocks) == len(report.layers) == 3 and all(b.deployed for b in blocks)
    assert all(isinstance(b.conv, DynamicConv) for b in blocks)
    assert _same(model, deployed, _x((2, 3, 32, 32), torch.float64)) <= 1e-10


@pytest.mark.parametrize("to", FAMILIES)
def test_every_branch_trains_after_one_step(to):
    model = _trained(small_cnn(), torch.float32)
    new, report = adopt(model, to, input_shape=(2, 3, 16, 16))
    new.train()
    opt = torch.optim.SGD(new.parameters(), lr=0.05)
    x, r = _x((4, 3, 16, 16), torch.float32), _x((4, 5), torch.float32, seed=2)
    for _ in range(2):
        opt.zero_grad()
        (new(x) * r).sum().backward()
        opt.step()
    blocks = {r.name for r in report.layers}
    dead = [
        f"{n} ({name})"
        for n, m in new.named_modules()
        if n in blocks
        for name, p in m.named_parameters()
        if p.grad is None or not bool(p.grad.abs().sum() > 0)
    ]
    assert not dead, dead


@pytest.mark.parametrize("to", FAMILIES)
def test_training_mode_starts_as_the_trained_layer(to):
    model = _trained(yolo_like(), torch.float64)
    new, _ = adopt(model, to)
    x = _x((4, 3, 32, 32), torch.float64)
    with torch.no_grad():
        _, rel = relative_error(copy.deepcopy(model).train()(x), new.train()(x))
    assert rel <= (1e-3 if to == "qarepvgg" else 1e-10)  # QARepVGG: eps (1e-3 here) enters both its BNs


@settings(max_examples=30, deadline=None)
@given(
    to=st.sampled_from(("repvgg", "dbb", "orepa", "qarepvgg")),
    c1=st.sampled_from([2, 4, 6]),
    c2=st.sampled_from([2, 4, 6]),
    k=st.sampled_from([1, 3, 5]),
    s=st.sampled_from([1, 2]),
    groups=st.sampled_from(["1", "2", "dw"]),
    bn=st.booleans(),
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_random_geometries_adopt_exactly(to, c1, c2, k, s, groups, bn, bias, dtype):
    g = {"1": 1, "2": 2, "dw": c1}[groups]
    if groups == "dw":
        c2 = c1
    conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=bias)
    model = _trained(nn.Sequential(conv, nn.BatchNorm2d(c2), nn.ReLU()) if bn else nn.Sequential(conv), dtype)
    new, report = adopt(model, to, where=lambda name, m: True, input_shape=(2, c1, 7, 8))
    refused = to == "qarepvgg" and k == 1 and c1 == c2 and s == 1
    if refused:
        assert not report.layers and "parameter-free identity" in report.skipped[0].reason
        return
    assert report.ok and len(report.layers) == 1, report
    assert _same(model, new, _x((2, c1, 7, 8), dtype)) <= TOL[dtype]


def test_where_dict_selects_by_type_name_kernel_stride():
    model = _trained(yolo_like(), torch.float64)
    _, r = adopt(model, "repvgg", where={"kernel": {1, 3}, "stride": 2})
    assert [x.name for x in r.layers] == ["0", "1", "4"]
    _, r = adopt(model, "repvgg", where={"names": ["[23]"], "types": Conv})
    assert [x.name for x in r.layers] == ["2", "3"]
    _, r = adopt(model, "orepa", where={"names": re.compile(r"[01]"), "kernel": 3})
    assert [x.name for x in r.layers] == ["0", "1"]
    _, r = adopt(model, "dbb", where=lambda name, m: m.conv.out_channels == 16)
    assert [x.name for x in r.layers] == ["1", "2", "3"]


def test_selected_but_unadoptable_is_listed_with_its_reason():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 0), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 2))
    model = _trained(model, torch.float64)
    _, report = adopt(model, "orepa", where={"types": nn.Conv2d})
    assert not report.layers and not report.ok
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("0", "padding 0 != 1 ('same' padding): orepa's branches are centred in the kxk"),
        ("2", "kernel 2 is even: orepa's smaller branches need a centre tap"),
    ]
    assert "nothing was adopted" in str(report)
    _, default = adopt(model, "orepa")
    assert "orepa cannot adopt it: padding 0" in default.not_selected[0].reason
    _, dyn = adopt(model, "dynamic", where={"types": nn.Conv2d})
    assert dyn.ok and len(dyn.layers) == 2


def test_inplace_and_frozen():
    model = _trained(yolo_like(), torch.float64)
    model[3].conv.weight.requires_grad_(False)
    same, report = adopt(model, "repvgg", inplace=True)
    assert same is model and type(model[0]).__name__ == "RepVGGBlock"
    assert ("3", "repvgg cannot adopt it: frozen conv (weight.requires_grad=False)") in [
        (s.name, s.reason) for s in report.not_selected
    ]


def test_bad_arguments():
    model = yolo_like()
    with pytest.raises(ValueError, match=r"to='mobileone'.*'repvgg', 'qarepvgg', 'dbb', 'orepa', 'dynamic'"):
        adopt(model, "mobileone")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['kernels'\]"):
        adopt(model, "dbb", where={"kernels": 3})
    with pytest.raises(ValueError, match=r"where\['stride'\]"):
        adopt(model, "dbb", where={"stride": "2"})
    with pytest.raises(ValueError, match=r"where must be None, a callable"):
        adopt(model, "dbb", where=3)
    with pytest.raises(ValueError, match=r"input_shape=\(2, 5, 8, 8\): the model failed"):
        adopt(model, "dbb", input_shape=(2, 5, 8, 8))


def test_report_text():
    _, report = adopt(_trained(small_cnn(), torch.float64), "dbb", input_shape=(1, 3, 16, 16))
    text = str(report)
    assert text.startswith("adopt -> dbb: 7 layer(s) replaced (")
    assert "max rel error" in text and "OK" in text and "2.conv1" in text and "BasicBlock" not in text
    assert report.transferred == sum(r.transferred for r in report.layers) == 6 * 5 + 7 + 2


def test_exported_from_package():
    assert reparam.adopt is adopt and reparam.AdoptReport is AdoptReport
