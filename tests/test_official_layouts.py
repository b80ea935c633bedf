"""Official layouts really load (issue 19 §4) and only exact shapes load (issue 18 §2).

The references are re-created from the published definitions (DingXiaoH/DiverseBranchBlock, JUGGHM/
OREPA_CVPR2022) with exactly their state-dict keys: DBB's ``IdentityBasedConv1x1`` keeps ``id_tensor`` as a
plain attribute, so the official state dict never holds it; with internal width != c1 the first 1x1 is a
plain ``conv1``. The key lists are written out from the official source and asserted, so the
re-creations cannot drift from it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reparam.blocks.dbb import DBB
from reparam.blocks.dynamic import DynamicConv
from reparam.blocks.orepa import OREPA, OREPA_1x1, OREPA_LargeConv, OREPARepVGG
from reparam.blocks.repvgg import RepVGGBlock
from reparam.convert import randomize_bn_
from reparam.verification import relative_error
from reparam.weights import load_weights
from test_load_weights import (  # the official DBB, re-created with its exact keys
    RefDBB,
    conv_bn,
    official_prior,
)

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
    ref = _trained(RefDBB(16, 24, 3, 1))
    state = ref.state_dict()
    assert list(state) == DBB_16_24_KEYS
    ours = DBB(16, 24, 3, 1, 1, act=False).double()
    report = load_weights(ours, state, strict=True)
    assert report.ok and [b.layout for b in report.blocks] == ["dbb-official"]
    assert _same(ref, ours, 16) < 1e-12


def test_official_dbb_depthwise_conv1_form_loads_strictly() -> None:
    ref = _trained(RefDBB(8, 8, 3, 1, 8))
    state = ref.state_dict()
    assert list(state) == DBB_DW_KEYS
    assert tuple(state["dbb_1x1_kxk.conv1.weight"].shape) == (16, 1, 1, 1)
    ours = DBB(8, 8, 3, 1, 1, g=8, act=False).double()
    report = load_weights(ours, state, strict=True)
    assert report.ok
    assert _same(ref, ours, 8) < 1e-12


def test_official_dbb_other_internal_width_is_a_named_shape_error() -> None:
    """internal_channels_1x1_3x3=8 with c1=4: reparam's DBB has width c1, so the tensor cannot load."""
    state = _trained(RefDBB(4, 8, 3, 1, width=8)).state_dict()
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


# --------------------------------------------------------------------------- official OREPA variants
class OfficialOREPA1x1(nn.Module):
    """OREPA_1x1 (blocks.py): bn(conv(x, v0 * origin + v1 * (conv2 @ conv1))), groups 1."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        t = min(c1, c2)
        self.weight_or1x1_origin = nn.Parameter(torch.randn(c2, c1, 1, 1))
        self.weight_or1x1_l2i_conv1 = nn.Parameter(torch.randn(t, c1, 1, 1))
        self.weight_or1x1_l2i_conv2 = nn.Parameter(torch.randn(c2, t, 1, 1))
        self.vector = nn.Parameter(torch.randn(2, c2))
        self.bn = nn.BatchNorm2d(c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vector
        low = torch.einsum("tihw,othw->oihw", self.weight_or1x1_l2i_conv1, self.weight_or1x1_l2i_conv2)
        w = self.weight_or1x1_origin * v[0].view(-1, 1, 1, 1) + low * v[1].view(-1, 1, 1, 1)
        return self.bn(F.conv2d(x, w))


class OfficialOREPAGenerator(nn.Module):
    """An official OREPA kernel generator, groups 1: ``OREPA`` (``tag='orepa'``, with its centred 1x1
    branch, six rows, weight-only as inside OREPA_LargeConv) or ``OREPA_3x3_RepVGG`` (``tag='rbr'``, no 1x1,
    five rows read, a sixth unused row when c1 == c2 and s == 1, and its own ``bn``)."""

    def __init__(self, c1: int, c2: int, tag: str, rows: int, s: int | None = None) -> None:
        super().__init__()
        self.tag, self.s = tag, s
        shapes = {"origin": (c2, c1, 3, 3), "avg_conv": (c2, c1, 1, 1), "pfir_conv": (c2, c1, 1, 1)}
        shapes |= {"1x1": (c2, c1, 1, 1)} if tag == "orepa" else {}
        shapes |= {"1x1_kxk_idconv1": (c1, c1, 1, 1), "1x1_kxk_conv2": (c2, c1, 3, 3)}
        shapes |= {"gconv_dw": (8 * c1, 1, 3, 3), "gconv_pw": (c2, 8 * c1, 1, 1)}
        for name, shape in shapes.items():
            setattr(self, f"weight_{tag}_{name}", nn.Parameter(torch.randn(shape)))
        self.vector = nn.Parameter(torch.randn(rows, c2))
        self.register_buffer(f"weight_{tag}_avg_avg", torch.ones(3, 3) / 9)
        self.register_buffer("id_tensor", torch.eye(c1).view(c1, c1, 1, 1))
        self.register_buffer(f"weight_{tag}_prior", official_prior(c2))
        if s is not None:
            self.bn = nn.BatchNorm2d(c2)

    def kernel(self) -> torch.Tensor:
        def w(name: str) -> torch.Tensor:
            return getattr(self, f"weight_{self.tag}_{name}")

        c2, c1 = w("origin").shape[:2]
        first = (w("1x1_kxk_idconv1") + self.id_tensor)[:, :, 0, 0]
        dw = w("gconv_dw").view(c1, 8, 3, 3)
        branches = [
            w("origin"),
            w("avg_conv") * w("avg_avg"),
            w("pfir_conv") * w("prior")[:, None],
            torch.einsum("ti,othw->oihw", first, w("1x1_kxk_conv2")),
            *([F.pad(w("1x1"), [1, 1, 1, 1])] if self.tag == "orepa" else []),
            torch.einsum("ithw,oit->oihw", dw, w("gconv_pw").view(c2, c1, 8)),
        ]
        return sum(b * self.vector[r].view(-1, 1, 1, 1) for r, b in enumerate(branches))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.conv2d(x, self.kernel(), None, self.s, 1))


class OfficialRepVGGOREPA(nn.Module):
    """RepVGGBlock_OREPA (blocks_repvgg.py), no SE: relu(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x))."""

    def __init__(self, c1: int, c2: int, s: int = 1) -> None:
        super().__init__()
        identity = c1 == c2 and s == 1
        self.rbr_identity = nn.BatchNorm2d(c1) if identity else None
        self.rbr_dense = OfficialOREPAGenerator(c1, c2, "rbr", 6 if identity else 5, s)
        self.rbr_1x1 = conv_bn(c1, c2, 1, s, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ident = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return F.relu(self.rbr_dense(x) + self.rbr_1x1(x) + ident)


class OfficialOREPALargeConv(nn.Module):
    """OREPA_LargeConv (blocks.py): stages ``weight<i>`` composed as ``conv2d(W.T, W_next, padding=2)``."""

    def __init__(self, c1: int, c2: int, k: int, s: int = 1) -> None:
        super().__init__()
        self.k, self.s, self.layers = k, s, (k - 1) // 2
        for i in range(self.layers):
            setattr(self, f"weight{i}", OfficialOREPAGenerator(c1 if i == 0 else c2, c2, "orepa", 6))
        self.bn = nn.BatchNorm2d(c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight0.kernel().transpose(0, 1)
        for i in range(1, self.layers):
            w = F.conv2d(w, getattr(self, f"weight{i}").kernel(), padding=2)
        return self.bn(F.conv2d(x, w.transpose(0, 1), None, self.s, self.k // 2))


OREPA_WEIGHT_KEYS = [
    "weight_orepa_origin", "weight_orepa_avg_conv", "weight_orepa_pfir_conv", "weight_orepa_1x1",
    "weight_orepa_1x1_kxk_idconv1", "weight_orepa_1x1_kxk_conv2", "weight_orepa_gconv_dw",
    "weight_orepa_gconv_pw", "vector", "weight_orepa_avg_avg", "id_tensor", "weight_orepa_prior",
]  # fmt: skip
OREPA_1X1_KEYS = [
    "weight_or1x1_origin",
    "weight_or1x1_l2i_conv1",
    "weight_or1x1_l2i_conv2",
    "vector",
    *_bn("bn"),
]
RBR_DENSE_KEYS = [
    "weight_rbr_origin", "weight_rbr_avg_conv", "weight_rbr_pfir_conv", "weight_rbr_1x1_kxk_idconv1",
    "weight_rbr_1x1_kxk_conv2", "weight_rbr_gconv_dw", "weight_rbr_gconv_pw", "vector",
    "weight_rbr_avg_avg", "id_tensor", "weight_rbr_prior", *_bn("bn"),
]  # fmt: skip


@pytest.mark.parametrize(("c1", "c2"), [(4, 8), (8, 4), (4, 4)])
def test_official_orepa_1x1_loads(c1: int, c2: int) -> None:
    ref = _trained(OfficialOREPA1x1(c1, c2))
    assert list(ref.state_dict()) == OREPA_1X1_KEYS
    ours = OREPA_1x1(c1, c2, 1, act=False).double()
    report = load_weights(ours, ref.state_dict())
    assert report.ok and [b.layout for b in report.blocks] == ["orepa-official"]
    assert _same(ref, ours, c1) < 1e-12


@pytest.mark.parametrize(("c1", "c2", "s"), [(4, 4, 1), (4, 6, 2), (6, 4, 1)])
def test_official_repvgg_style_orepa_loads(c1: int, c2: int, s: int) -> None:
    ref = _trained(OfficialRepVGGOREPA(c1, c2, s))
    ident = _bn("rbr_identity") if c1 == c2 and s == 1 else []
    dense = [f"rbr_dense.{k}" for k in RBR_DENSE_KEYS]
    assert list(ref.state_dict()) == [*ident, *dense, "rbr_1x1.conv.weight", *_bn("rbr_1x1.bn")]
    ours = OREPARepVGG(c1, c2, 3, s, act=nn.ReLU()).double()
    report = load_weights(ours, ref.state_dict())
    assert report.ok and [b.layout for b in report.blocks] == ["orepa-repvgg-official"]
    assert _same(ref, ours, c1) < 1e-12


@pytest.mark.parametrize(("c1", "c2", "k", "s"), [(4, 6, 5, 1), (3, 4, 7, 2)])
def test_official_orepa_large_conv_loads(c1: int, c2: int, k: int, s: int) -> None:
    ref = _trained(OfficialOREPALargeConv(c1, c2, k, s))
    stages = [f"weight{i}.{key}" for i in range((k - 1) // 2) for key in OREPA_WEIGHT_KEYS]
    assert list(ref.state_dict()) == [*stages, *_bn("bn")]
    ours = OREPA_LargeConv(c1, c2, k, s, act=False).double()
    report = load_weights(ours, ref.state_dict())
    assert report.ok and [b.layout for b in report.blocks] == ["orepa-official"]
    assert _same(ref, ours, c1) < 1e-10


# --------------------------------------------------------------------------- layouts not mapped: named
def test_official_repvgg_se_tensors_are_refused_by_name() -> None:
    """reparam's RepVGGBlock has no SE, so official SE tensors cannot load: strict names them and says why."""
    ours = RepVGGBlock(8, 8, 3, act=nn.ReLU())
    state = dict(ours.state_dict())
    state["se.down.weight"] = torch.randn(2, 8, 1, 1)
    with pytest.raises(ValueError, match=r"unmapped source tensors: se\.down\.weight.*no SE"):
        load_weights(ours, state)
