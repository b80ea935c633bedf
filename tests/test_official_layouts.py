"""Official layouts really load (issue 19 §4) and only exact shapes load (issue 18 §2).

The DBB reference below is re-created from the published DingXiaoH/DiverseBranchBlock definition with
exactly its state-dict keys: ``IdentityBasedConv1x1`` keeps ``id_tensor`` as a plain attribute, so the
official state dict never holds it; with internal width != c1 the first 1x1 is a plain ``conv1``. The key
lists are written out from the official source and asserted, so the re-creation cannot drift from it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reparam.blocks.dbb import DBB
from reparam.blocks.dynamic import DynamicConv
from reparam.blocks.orepa import OREPA, OREPA_1x1
from reparam.blocks.repvgg import RepVGGBlock
from reparam.convert import randomize_bn_
from reparam.verification import relative_error
from reparam.weights import load_weights

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{n}" for n in BN]


# Keys of the official DiverseBranchBlock(16, 24, 3, 1, 1) (g < c2: idconv1 form, no id_tensor).
DBB_16_24_KEYS = [
    "dbb_origin.conv.weight", *_bn("dbb_origin.bn"),
    "dbb_avg.conv.weight", *_bn("dbb_avg.bn.bn"), *_bn("dbb_avg.avgbn"),
    "dbb_1x1.conv.weight", *_bn("dbb_1x1.bn"),
    "dbb_1x1_kxk.idconv1.weight", *_bn("dbb_1x1_kxk.bn1.bn"),
    "dbb_1x1_kxk.conv2.weight", *_bn("dbb_1x1_kxk.bn2"),
]  # fmt: skip
# Keys of the official DiverseBranchBlock(8, 8, 3, 1, 1, groups=8) (depthwise: width 16, plain conv1).
DBB_DW_KEYS = [
    "dbb_origin.conv.weight", *_bn("dbb_origin.bn"),
    *_bn("dbb_avg.avgbn"),
    "dbb_1x1_kxk.conv1.weight", *_bn("dbb_1x1_kxk.bn1.bn"),
    "dbb_1x1_kxk.conv2.weight", *_bn("dbb_1x1_kxk.bn2"),
]  # fmt: skip


# --------------------------------------------------------------------------- official DBB, re-created
def _conv_bn(c1: int, c2: int, k: int, s: int, p: int, g: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(c1, c2, k, s, p, groups=g, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(c2))
    return seq


class OfficialIdentityConv1x1(nn.Conv2d):
    """kernel = weight + id_tensor, where id_tensor is a plain tensor attribute (not a buffer)."""

    def __init__(self, c: int, g: int) -> None:
        super().__init__(c, c, 1, groups=g, bias=False)
        ig = c // g
        ident = torch.zeros(c, ig, 1, 1)
        ident[torch.arange(c), torch.arange(c) % ig] = 1
        self.id_tensor = ident
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight + self.id_tensor.to(self.weight), None, 1, 0, 1, self.groups)


class OfficialBNAndPad(nn.Module):
    """A wrapped ``bn``; the output border is filled with the BN's value for a zero input."""

    def __init__(self, pad: int, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        if self.pad == 0:
            return y
        bn = self.bn
        fill = bn.bias.detach() - bn.running_mean * bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        border = torch.ones_like(F.pad(y, [self.pad] * 4)) * fill.view(1, -1, 1, 1)
        p = self.pad
        border[:, :, p:-p, p:-p] = y
        return border


class OfficialDBB(nn.Module):
    """DiverseBranchBlock(c1, c2, k, s, p, groups, internal_channels_1x1_3x3), no nonlinearity."""

    def __init__(self, c1: int, c2: int, k: int, s: int, p: int, g: int = 1, width: int | None = None):
        super().__init__()
        self.dbb_origin = _conv_bn(c1, c2, k, s, p, g)
        self.dbb_avg = nn.Sequential()
        if g < c2:
            self.dbb_avg.add_module("conv", nn.Conv2d(c1, c2, 1, groups=g, bias=False))
            self.dbb_avg.add_module("bn", OfficialBNAndPad(p, c2))
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, s, 0))
            self.dbb_1x1 = _conv_bn(c1, c2, 1, s, 0, g)
        else:
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, s, p))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(c2))
        t = width if width is not None else (c1 if g < c2 else 2 * c1)
        self.dbb_1x1_kxk = nn.Sequential()
        if t == c1:
            self.dbb_1x1_kxk.add_module("idconv1", OfficialIdentityConv1x1(c1, g))
        else:
            self.dbb_1x1_kxk.add_module("conv1", nn.Conv2d(c1, t, 1, groups=g, bias=False))
        self.dbb_1x1_kxk.add_module("bn1", OfficialBNAndPad(p, t))
        self.dbb_1x1_kxk.add_module("conv2", nn.Conv2d(t, c2, k, s, 0, groups=g, bias=False))
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(c2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dbb_origin(x) + self.dbb_avg(x) + self.dbb_1x1_kxk(x)
        return out + self.dbb_1x1(x) if hasattr(self, "dbb_1x1") else out


def _trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics everywhere (as a trained file would hold), eval mode, fp64."""
    model = model.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3)
    randomize_bn_(model, seed)
    return model.eval()


def _same(ref: nn.Module, ours: nn.Module, c1: int) -> float:
    x = torch.randn(2, c1, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        return relative_error(ref(x), ours.eval()(x))[1]


# --------------------------------------------------------------------------- DBB: both 1x1 -> kxk forms
def test_official_dbb_idconv1_form_loads_strictly() -> None:
    ref = _trained(OfficialDBB(16, 24, 3, 1, 1))
    state = ref.state_dict()
    assert list(state) == DBB_16_24_KEYS
    ours = DBB(16, 24, 3, 1, 1, act=False).double()
    report = load_weights(ours, state, strict=True)
    assert report.ok and [b.layout for b in report.blocks] == ["dbb-official"]
    assert _same(ref, ours, 16) < 1e-12


def test_official_dbb_depthwise_conv1_form_loads_strictly() -> None:
    ref = _trained(OfficialDBB(8, 8, 3, 1, 1, g=8))
    state = ref.state_dict()
    assert list(state) == DBB_DW_KEYS
    assert tuple(state["dbb_1x1_kxk.conv1.weight"].shape) == (16, 1, 1, 1)
    ours = DBB(8, 8, 3, 1, 1, g=8, act=False).double()
    report = load_weights(ours, state, strict=True)
    assert report.ok
    assert _same(ref, ours, 8) < 1e-12


def test_official_dbb_other_internal_width_is_a_named_shape_error() -> None:
    """internal_channels_1x1_3x3=8 with c1=4: reparam's DBB has width c1, so the tensor cannot load."""
    state = _trained(OfficialDBB(4, 8, 3, 1, 1, width=8)).state_dict()
    with pytest.raises(
        ValueError, match=r"dbb_1x1_kxk\.conv1\.weight has shape \(8, 4, 1, 1\).*\(4, 4, 1, 1\)"
    ):
        load_weights(DBB(4, 8, 3, 1, 1, act=False).double(), state)


# --------------------------------------------------------------------------- only exact shapes load
def test_hwio_weights_do_not_load_by_element_count() -> None:
    ours = RepVGGBlock(8, 16, 3, act=nn.ReLU())
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    state["rbr_dense.conv.weight"] = state["rbr_dense.conv.weight"].permute(2, 3, 1, 0).contiguous()  # HWIO
    with pytest.raises(
        ValueError, match=r"rbr_dense\.conv\.weight \(3, 3, 8, 16\) -> rbr_dense\.conv\.weight"
    ):
        load_weights(ours, state)


def test_a_16_to_8_layer_does_not_load_into_an_8_to_16_block() -> None:
    source = OREPA(16, 8, 3).state_dict()
    official = {
        "weight_orepa_origin": source["gen.weight_origin"],
        "weight_orepa_prior": torch.zeros(8, 3, 3),
        "vector": source["gen.vector"],
    }
    ours = OREPA(8, 16, 3)
    with pytest.raises(ValueError, match=r"weight_orepa_prior has shape \(8, 3, 3\) .*needs \(16, 3, 3\)"):
        load_weights(ours, official, strict=False)
    official.pop("weight_orepa_prior")
    with pytest.raises(
        ValueError, match=r"weight_orepa_origin \(8, 16, 3, 3\) -> gen\.weight_origin \(16, 8, 3, 3\)"
    ):
        load_weights(ours, official, strict=False)


def test_condconv_bank_with_the_same_count_but_wrong_layout_is_refused() -> None:
    ours = DynamicConv(4, 6, 3, num_experts=4)
    state = {"routing.weight": torch.randn(4, 4), "routing.bias": torch.randn(4),
             "cond_conv.weight": torch.randn(4 * 6, 4 * 9)}  # fmt: skip
    with pytest.raises(ValueError, match=r"cond_conv\.weight has shape \(24, 36\) .*needs \(4, 6, 36\)"):
        load_weights(ours, state)


# --------------------------------------------------------------------------- layouts not mapped: named
def test_official_orepa_1x1_layout_is_refused_by_name() -> None:
    """Official OREPA_1x1 tensors (``weight_or1x1_*``) are not mapped: strict names them, nothing loads."""
    ours = OREPA_1x1(4, 8, 1)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    shapes = {"weight_or1x1_origin": (8, 4, 1, 1), "weight_or1x1_l2i_conv1": (4, 4, 1, 1),
              "weight_or1x1_l2i_conv2": (8, 4, 1, 1), "vector": (2, 8)}  # fmt: skip
    state = {k: torch.randn(shape) for k, shape in shapes.items()}
    with pytest.raises(ValueError, match=r"unmapped source tensors: weight_or1x1_"):
        load_weights(ours, state)
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_official_repvgg_se_tensors_are_refused_by_name() -> None:
    ours = RepVGGBlock(8, 8, 3, act=nn.ReLU())
    state = dict(ours.state_dict())
    state["se.down.weight"] = torch.randn(2, 8, 1, 1)
    with pytest.raises(ValueError, match=r"unmapped source tensors: se\.down\.weight"):
        load_weights(ours, state)
