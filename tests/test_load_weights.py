"""load_weights: the official layouts (re-created here from their published definitions) load into reparam
blocks of the same geometry and give the same outputs; strict mode names what does not map."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reparam
from reparam.blocks.dbb import DBB
from reparam.blocks.dynamic import DynamicConv
from reparam.blocks.orepa import create_orepa
from reparam.blocks.repvgg import QARepVGGBlock, RepVGGBlock
from reparam.convert import randomize_bn_
from reparam.verification import relative_error
from reparam.weights import load_weights

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


# --------------------------------------------------------------------------- reference layers (re-created)
def conv_bn(c1, c2, k, s, p, g):
    """The references' ``conv_bn``: a Sequential of a bias-free ``conv`` and a ``bn``."""
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(c1, c2, k, s, p, groups=g, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(c2))
    return seq


class RefRepVGG(nn.Module):
    """RepVGG block (DingXiaoH/RepVGG, also YOLOv6 RepVGGBlock): relu(dense + 1x1 + identity BN)."""

    def __init__(self, c1, c2, k=3, s=1, g=1):
        super().__init__()
        p = k // 2
        self.rbr_identity = nn.BatchNorm2d(c1) if c1 == c2 and s == 1 else None
        self.rbr_dense = conv_bn(c1, c2, k, s, p, g)
        self.rbr_1x1 = conv_bn(c1, c2, 1, s, p - k // 2, g)

    def forward(self, x):
        ident = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return F.relu(self.rbr_dense(x) + self.rbr_1x1(x) + ident)


class RefQARepVGG(nn.Module):
    """YOLOv6 QARepVGGBlock: relu(bn(dense + bias-free 1x1 + x)), identity only if c1 == c2 and s == 1."""

    def __init__(self, c1, c2, k=3, s=1, g=1):
        super().__init__()
        self.has_identity = c1 == c2 and s == 1
        self.rbr_dense = conv_bn(c1, c2, k, s, k // 2, g)
        self.rbr_1x1 = nn.Conv2d(c1, c2, 1, s, 0, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)

    def forward(self, x):
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        return F.relu(self.bn(y + x if self.has_identity else y))


class RefBNAndPad(nn.Module):
    """DBB's BN-and-pad: a wrapped ``bn`` whose output border is filled with the BN of zero."""

    def __init__(self, pad, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.pad = pad

    def forward(self, x):
        out = self.bn(x)
        if self.pad > 0:
            bn = self.bn
            std = torch.sqrt(bn.running_var + bn.eps)
            value = bn.bias.detach() - bn.running_mean * bn.weight.detach() / std
            out = F.pad(out, [self.pad] * 4)
            value = value.view(1, -1, 1, 1)
            p = self.pad
            out[:, :, :p, :] = value
            out[:, :, -p:, :] = value
            out[:, :, :, :p] = value
            out[:, :, :, -p:] = value
        return out


class RefIdentityConv(nn.Conv2d):
    """DBB's IdentityBasedConv1x1: kernel = weight + ``id_tensor``, a plain attribute (not a buffer), so
    the official state dict holds only ``weight``."""

    def __init__(self, c, g):
        super().__init__(c, c, 1, 1, 0, groups=g, bias=False)
        ident = torch.zeros(c, c // g, 1, 1)
        for i in range(c):
            ident[i, i % (c // g), 0, 0] = 1
        self.id_tensor = ident

    def forward(self, x):
        return F.conv2d(x, self.weight + self.id_tensor.to(self.weight), None, 1, 0, 1, self.groups)


class RefDBB(nn.Module):
    """Diverse Branch Block (DingXiaoH/DiverseBranchBlock), no nonlinearity; ``width`` is its
    ``internal_channels_1x1_3x3``."""

    def __init__(self, c1, c2, k=3, s=1, g=1, width=None):
        super().__init__()
        p = k // 2
        self.dbb_origin = conv_bn(c1, c2, k, s, p, g)
        self.dbb_avg = nn.Sequential()
        if g < c2:
            self.dbb_avg.add_module("conv", nn.Conv2d(c1, c2, 1, 1, 0, groups=g, bias=False))
            self.dbb_avg.add_module("bn", RefBNAndPad(p, c2))
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, s, 0))
            self.dbb_1x1 = conv_bn(c1, c2, 1, s, 0, g)
        else:
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, s, p))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(c2))
        t = width if width is not None else c1 if g < c2 else 2 * c1
        self.dbb_1x1_kxk = nn.Sequential()
        if t == c1:
            self.dbb_1x1_kxk.add_module("idconv1", RefIdentityConv(c1, g))
        else:
            self.dbb_1x1_kxk.add_module("conv1", nn.Conv2d(c1, t, 1, 1, 0, groups=g, bias=False))
        self.dbb_1x1_kxk.add_module("bn1", RefBNAndPad(p, t))
        self.dbb_1x1_kxk.add_module("conv2", nn.Conv2d(t, c2, k, s, 0, groups=g, bias=False))
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(c2))

    def forward(self, x):
        out = self.dbb_origin(x) + self.dbb_avg(x) + self.dbb_1x1_kxk(x)
        return out + self.dbb_1x1(x) if hasattr(self, "dbb_1x1") else out


def official_prior(c2):
    """OREPA's frequency prior as the reference's fre_init() builds it (k = 3, frequency not wrapped)."""
    prior = torch.zeros(c2, 3, 3)
    half = c2 / 2
    for i in range(c2):
        for h in range(3):
            for w in range(3):
                f, pos = (i + 1, h) if i < half else (i + 1 - half, w)
                prior[i, h, w] = math.cos(math.pi * (pos + 0.5) * f / 3)
    return prior


class RefOREPA(nn.Module):
    """OREPA (JUGGHM/OREPA_CVPR2022) as published: six generated branches, one conv, one BN.

    Its frequency prior is defined for k = 3 with the frequency not wrapped (a channel may get a zero
    filter, and with odd c2 the second half gets fractional frequencies), and its depthwise-separable
    branch reads the pointwise weight as ``view(c2/g, g, ...)`` (a row permutation for g > 1).
    """

    def __init__(self, c1, c2, k=3, s=1, g=1):
        super().__init__()
        self.c1, self.c2, self.k, self.s, self.g = c1, c2, k, s, g
        ig, t = c1 // g, (c1 if g <= 4 else 2 * c1)
        P = nn.Parameter
        self.weight_orepa_origin = P(torch.randn(c2, ig, k, k))
        self.weight_orepa_avg_conv = P(torch.randn(c2, ig, 1, 1))
        self.weight_orepa_pfir_conv = P(torch.randn(c2, ig, 1, 1))
        self.register_buffer("weight_orepa_avg_avg", torch.ones(k, k) / k**2)
        prior = official_prior(c2)  # registered last, as the official fre_init() does
        self.weight_orepa_1x1 = P(torch.randn(c2, ig, 1, 1))
        self.weight_orepa_1x1_kxk_idconv1 = P(torch.randn(t, ig, 1, 1) * 0.3)
        ident = torch.zeros(t, ig, 1, 1)
        for i in range(t):
            ident[i, i % ig, 0, 0] = 1
        self.register_buffer("id_tensor", ident)
        self.weight_orepa_1x1_kxk_conv2 = P(torch.randn(c2, t // g, k, k))
        self.weight_orepa_gconv_dw = P(torch.randn(8 * c1, 1, k, k))
        self.weight_orepa_gconv_pw = P(torch.randn(c2, 8 * c1 // g, 1, 1))
        self.vector = P(torch.randn(6, c2))
        self.bn = nn.BatchNorm2d(c2)
        self.register_buffer("weight_orepa_prior", prior)

    def kernel(self):
        c1, c2, k, g = self.c1, self.c2, self.k, self.g
        v = self.vector
        origin = self.weight_orepa_origin * v[0].view(-1, 1, 1, 1)
        avg = torch.einsum("oi,hw->oihw", self.weight_orepa_avg_conv[:, :, 0, 0], self.weight_orepa_avg_avg)
        prior = torch.einsum("oi,ohw->oihw", self.weight_orepa_pfir_conv[:, :, 0, 0], self.weight_orepa_prior)
        first = (self.weight_orepa_1x1_kxk_idconv1 + self.id_tensor)[:, :, 0, 0]
        t, ig = first.shape
        second = self.weight_orepa_1x1_kxk_conv2
        chain = torch.einsum(
            "gti,gothw->goihw", first.view(g, t // g, ig), second.view(g, c2 // g, t // g, k, k)
        ).reshape(c2, ig, k, k)
        one = F.pad(self.weight_orepa_1x1, [k // 2] * 4)
        dw = self.weight_orepa_gconv_dw.view(g, c1 // g, 8, 1, k, k)
        pw = self.weight_orepa_gconv_pw.reshape(c2 // g, g, c1 // g, 8)
        dsc = torch.einsum("cgtihw,ocgt->cogihw", dw, pw).reshape(c2, ig, k, k)
        scale = [avg, prior, chain, one, dsc]
        return origin + sum(b * v[r + 1].view(-1, 1, 1, 1) for r, b in enumerate(scale))

    def forward(self, x):
        return self.bn(F.conv2d(x, self.kernel(), None, self.s, self.k // 2, 1, self.g))


class RefCondConvDynamic(nn.Module):
    """ParameterNet DynamicConv: ``routing`` Linear on the pooled input, sigmoid gates, timm CondConv2d
    expert bank ``cond_conv.weight`` (E, c2*c1/g*k*k) and bias (E, c2)."""

    def __init__(self, c1, c2, k=3, s=1, g=1, experts=4, bias=True):
        super().__init__()
        self.c1, self.c2, self.k, self.s, self.g = c1, c2, k, s, g
        self.routing = nn.Linear(c1, experts)
        self.cond_conv = nn.Module()
        self.cond_conv.weight = nn.Parameter(torch.randn(experts, c2 * c1 // g * k * k))
        self.cond_conv.bias = nn.Parameter(torch.randn(experts, c2)) if bias else None

    def forward(self, x):
        gates = torch.sigmoid(self.routing(x.mean((2, 3))))
        outs = []
        for b in range(x.shape[0]):
            w = (gates[b] @ self.cond_conv.weight).view(self.c2, self.c1 // self.g, self.k, self.k)
            bias = gates[b] @ self.cond_conv.bias if self.cond_conv.bias is not None else None
            outs.append(F.conv2d(x[b : b + 1], w, bias, self.s, self.k // 2, 1, self.g))
        return torch.cat(outs)


# --------------------------------------------------------------------------- helpers
def _randomize(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) * 0.5)
    randomize_bn_(model, seed)
    return model.eval()


def _assert_same(ref, ours, dtype, shape=(2, 4, 9, 9), seed=1):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    with torch.no_grad():
        _, rel = relative_error(ref(x), ours.eval()(x))
    assert rel <= TOL[dtype], rel


def _wrap(m):
    return nn.Sequential(nn.Identity(), m)


# --------------------------------------------------------------------------- the official key lists
BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def _bn(prefix):
    return [f"{prefix}.{n}" for n in BN]


OFFICIAL_KEYS = {  # written from the published definitions (SPEC.md §7), in their state-dict order
    "RepVGG(4, 4)": [*_bn("rbr_identity"), "rbr_dense.conv.weight", *_bn("rbr_dense.bn"),
                     "rbr_1x1.conv.weight", *_bn("rbr_1x1.bn")],
    "RepVGG(4, 8, s=2)": ["rbr_dense.conv.weight", *_bn("rbr_dense.bn"), "rbr_1x1.conv.weight",
                          *_bn("rbr_1x1.bn")],
    "QARepVGG(4, 4)": ["rbr_dense.conv.weight", *_bn("rbr_dense.bn"), "rbr_1x1.weight", *_bn("bn")],
    "DBB(4, 8)": ["dbb_origin.conv.weight", *_bn("dbb_origin.bn"), "dbb_avg.conv.weight",
                  *_bn("dbb_avg.bn.bn"), *_bn("dbb_avg.avgbn"), "dbb_1x1.conv.weight", *_bn("dbb_1x1.bn"),
                  "dbb_1x1_kxk.idconv1.weight", *_bn("dbb_1x1_kxk.bn1.bn"), "dbb_1x1_kxk.conv2.weight",
                  *_bn("dbb_1x1_kxk.bn2")],
    "DBB(6, 6, g=6)": ["dbb_origin.conv.weight", *_bn("dbb_origin.bn"), *_bn("dbb_avg.avgbn"),
                       "dbb_1x1_kxk.conv1.weight", *_bn("dbb_1x1_kxk.bn1.bn"), "dbb_1x1_kxk.conv2.weight",
                       *_bn("dbb_1x1_kxk.bn2")],
    "OREPA(4, 8)": ["weight_orepa_origin", "weight_orepa_avg_conv", "weight_orepa_pfir_conv",
                    "weight_orepa_1x1", "weight_orepa_1x1_kxk_idconv1", "weight_orepa_1x1_kxk_conv2",
                    "weight_orepa_gconv_dw", "weight_orepa_gconv_pw", "vector", "weight_orepa_avg_avg",
                    "id_tensor", "weight_orepa_prior", *_bn("bn")],
    "CondConv(4, 6)": ["routing.weight", "routing.bias", "cond_conv.weight", "cond_conv.bias"],
}  # fmt: skip
REFERENCES = {
    "RepVGG(4, 4)": lambda: RefRepVGG(4, 4),
    "RepVGG(4, 8, s=2)": lambda: RefRepVGG(4, 8, 3, 2),
    "QARepVGG(4, 4)": lambda: RefQARepVGG(4, 4),
    "DBB(4, 8)": lambda: RefDBB(4, 8),
    "DBB(6, 6, g=6)": lambda: RefDBB(6, 6, 3, 1, 6),
    "OREPA(4, 8)": lambda: RefOREPA(4, 8),
    "CondConv(4, 6)": lambda: RefCondConvDynamic(4, 6),
}


@pytest.mark.parametrize("name", list(OFFICIAL_KEYS))
def test_references_have_exactly_the_official_keys(name):
    """The re-created references save what the official code saves, no more (a buffer the official code
    keeps as a plain attribute would hide a missing tensor) and no less."""
    assert list(REFERENCES[name]().state_dict()) == OFFICIAL_KEYS[name]


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("c1", "c2", "s", "g"), [(4, 4, 1, 1), (4, 8, 2, 2), (4, 4, 1, 4)])
def test_repvgg_official_layout(c1, c2, s, g, dtype):
    ref = _randomize(_wrap(RefRepVGG(c1, c2, 3, s, g)).to(dtype))
    ours = _wrap(RepVGGBlock(c1, c2, 3, s, g=g, act=nn.ReLU())).to(dtype)
    report = load_weights(ours, ref.state_dict())
    assert [(b.name, b.layout) for b in report.blocks] == [("1", "reparam")]
    assert report.ok and report.loaded == len(ref.state_dict())
    _assert_same(ref, ours, dtype, (2, c1, 9, 9))


def test_repvgg_deploy_layout():
    ref_conv = nn.Conv2d(4, 8, 3, 2, 1, bias=True).double()
    _randomize(ref_conv)
    ours = RepVGGBlock(4, 8, 3, 2, act=nn.ReLU()).double().eval()
    ours.reparameterize()
    report = load_weights(_wrap(ours), {f"1.rbr_reparam.{k}": v for k, v in ref_conv.state_dict().items()})
    assert report.blocks[0].layout == "repvgg-deploy"
    _assert_same(lambda x: F.relu(ref_conv(x)), ours, torch.float64)


@pytest.mark.parametrize(("c1", "c2", "s"), [(4, 4, 1), (4, 6, 2)])
def test_yolov6_qarepvgg_layout(c1, c2, s):
    ref = _randomize(_wrap(RefQARepVGG(c1, c2, 3, s)).double())
    ours = _wrap(QARepVGGBlock(c1, c2, 3, s, act=nn.ReLU())).double()
    assert load_weights(ours, ref.state_dict()).ok
    _assert_same(ref, ours, torch.float64, (2, c1, 9, 9))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("c1", "c2", "s", "g"), [(4, 8, 1, 1), (4, 4, 2, 2), (6, 6, 1, 6), (4, 6, 2, 2)])
def test_dbb_official_layout(c1, c2, s, g, dtype):
    ref = _randomize(_wrap(RefDBB(c1, c2, 3, s, g)).to(dtype))
    ours = _wrap(DBB(c1, c2, 3, s, g=g, act=nn.Identity())).to(dtype)
    report = load_weights(ours, ref.state_dict())
    assert report.blocks[0].layout == "dbb-official" and report.ok
    _assert_same(ref, ours, dtype, (2, c1, 9, 9))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("c1", "c2", "s", "g"), [(4, 5, 1, 1), (4, 8, 2, 2), (4, 4, 1, 4), (8, 8, 1, 8)])
def test_orepa_official_layout(c1, c2, s, g, dtype):
    ref = _randomize(_wrap(RefOREPA(c1, c2, 3, s, g)).to(dtype))
    saved_prior = ref[1].weight_orepa_prior.clone()
    ours = _wrap(create_orepa(c1, c2, 3, s, g=g, act=nn.Identity())).to(dtype)
    report = load_weights(ours, ref.state_dict())
    assert report.blocks[0].layout == "orepa-official" and report.ok, report
    _assert_same(ref, ours, dtype, (2, c1, 9, 9))
    prior = ours[1].gen.fixed_filters.view(-1, c2, 3, 3)[1]
    assert torch.equal(prior, saved_prior)  # the reference's unwrapped prior (zero filters included) is kept


@pytest.mark.parametrize(("c1", "c2", "k", "s", "g", "bias"), [(4, 6, 3, 1, 1, True), (4, 4, 1, 2, 2, False)])
def test_timm_condconv_layout(c1, c2, k, s, g, bias):
    ref = _randomize(_wrap(RefCondConvDynamic(c1, c2, k, s, g, 4, bias)).double())
    ours = _wrap(DynamicConv(c1, c2, k, s, g=g, bias=bias, num_experts=4)).double()
    report = load_weights(ours, ref.state_dict())
    assert report.blocks[0].layout == "timm-condconv" and report.ok
    _assert_same(ref, ours, torch.float64, (3, c1, 9, 9))


def test_reparam_own_state_dict_and_wrappers(tmp_path):
    src = _randomize(nn.Sequential(RepVGGBlock(4, 4, act=nn.ReLU()), DBB(4, 8, act=nn.ReLU())).double())
    dst = nn.Sequential(RepVGGBlock(4, 4, act=nn.ReLU()), DBB(4, 8, act=nn.ReLU())).double()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    path = tmp_path / "ckpt.pt"
    torch.save(wrapped, path)
    report = load_weights(dst, path)
    assert {b.layout for b in report.blocks} == {"reparam"} and report.ok
    _assert_same(src, dst, torch.float64)
    dst2 = nn.Sequential(RepVGGBlock(4, 4, act=nn.ReLU()), DBB(4, 8, act=nn.ReLU())).double()
    assert load_weights(dst2, {"model": src.state_dict()}).ok
    _assert_same(src, dst2, torch.float64)


def test_strict_names_unmapped_and_missing():
    ref = _randomize(_wrap(RefRepVGG(4, 4)).double())
    state = dict(ref.state_dict())
    state["1.se.down.weight"] = torch.zeros(2, 4, 1, 1)
    with pytest.raises(ValueError, match=r"unmapped source tensors: 1\.se\.down\.weight"):
        load_weights(_wrap(RepVGGBlock(4, 4)).double(), state)
    del state["1.se.down.weight"], state["1.rbr_1x1.conv.weight"]
    with pytest.raises(ValueError, match=r"model tensors not provided: 1\.rbr_1x1\.conv\.weight"):
        load_weights(_wrap(RepVGGBlock(4, 4)).double(), state)
    report = load_weights(_wrap(RepVGGBlock(4, 4)).double(), state, strict=False)
    assert report.missing == ["1.rbr_1x1.conv.weight"] and not report.ok
    assert "model tensors not provided (unchanged): 1.rbr_1x1.conv.weight" in str(report)


def test_strict_lists_first_ten_and_count():
    state = {f"extra.{i}": torch.zeros(1) for i in range(13)}
    with pytest.raises(ValueError, match=r"and 3 more \(13 in all\)"):
        load_weights(nn.Sequential(), state)


def test_orepa_without_saved_prior_is_missing():
    ref = _randomize(_wrap(RefOREPA(4, 4)).double())
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("weight_orepa_prior")}
    with pytest.raises(ValueError, match=r"not provided: 1\.gen\.fixed_filters"):
        load_weights(_wrap(create_orepa(4, 4, 3, act=nn.Identity())).double(), state)


def test_shape_mismatch_is_an_error_even_non_strict():
    ref = _randomize(_wrap(RefRepVGG(4, 8)).double())
    with pytest.raises(ValueError, match=r"do not fit the model's shapes"):
        load_weights(_wrap(RepVGGBlock(4, 6)).double(), ref.state_dict(), strict=False)


def test_bad_inputs():
    with pytest.raises(ValueError, match="holds no state dict"):
        load_weights(nn.Sequential(), {"model": "yolov8n"})
    with pytest.raises(ValueError, match="strict must be"):
        load_weights(nn.Sequential(), {"a": torch.zeros(1)}, strict="yes")


def test_exported_from_package():
    assert reparam.load_weights is load_weights


def test_a_path_needing_an_unlisted_class_loads_only_when_trusted(tmp_path) -> None:
    from checkpoint_payloads import Harmless
    from reparam.io import UnsafeCheckpointError

    block = RepVGGBlock(4, 4).eval()
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": block.state_dict(), "meta": Harmless("trained elsewhere", 1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="checkpoint_payloads.Harmless"):
        reparam.load_weights(RepVGGBlock(4, 4), path)
    target = RepVGGBlock(4, 4).eval()
    reparam.load_weights(target, path, trust=True)
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(target(x), block(x))
