"""YOLOv6 EfficientRep blocks and builders: exact conversion, shapes/strides, parameter counts, errors.

Parameter counts are checked against formulas written per layer from the YOLOv6 v3.0 architecture
definition (``configs/yolov6{n,s,m,l}.py`` + ``yolov6/layers/common.py``), with the scaled channel and
repeat lists written out by hand (e.g. n: width 0.25 -> [16, 32, 64, 128, 256], depth 0.33 ->
repeats [1, 2, 4, 6, 2]), so the builders' scaling is checked too.
"""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reparam
from reparam.blocks import OREPA, ConvBNAct, QARepVGGBlock, ReparamBlock, RepVGGBlock
from reparam.blocks.efficientrep import (
    BASIC_BLOCKS,
    BepC3,
    BiC,
    BottleRep,
    RepBlock,
    SimCSPSPPF,
    SimSPPF,
    Transpose,
    resolve_basic_block,
)
from reparam.blocks.registry import registered_blocks
from reparam.convert import randomize_bn_
from reparam.models import EfficientRep, efficientrep_backbone, reppan_neck

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
FAST = settings(max_examples=12, deadline=None)
DTYPES = st.sampled_from([torch.float32, torch.float64])
BLOCKS = st.sampled_from(["RepVGGBlock", "QARepVGGBlock", "ConvBNAct"])
ACTS = st.sampled_from(["relu", "silu"])
DEPLOY_KEYS = ("conv.weight", "conv.bias", "alpha", "upsample_transpose.weight", "upsample_transpose.bias")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is ~10x faster than two on a busy CI machine (no thread hand-off)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check_exact(
    model: nn.Module, x, dtype: torch.dtype, seed: int, per_block: bool = True
) -> reparam.VerifyReport:
    """verify() in ``dtype`` with random BN statistics; also check the deploy form's structure."""
    report = reparam.verify(
        model, x, dtype=dtype, randomize_bn=True, seed=seed, rtol=TOL[dtype], per_block=per_block
    )
    assert report.ok, str(report)
    assert report.max_rel <= TOL[dtype]
    deploy = reparam.reparameterize(model.eval())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert all(k.endswith(DEPLOY_KEYS) for k in deploy.state_dict()), list(deploy.state_dict())
    return report


def count_deployed_blocks(model: nn.Module) -> int:
    """Converted multi-branch blocks (each now one conv + activation) in ``model``."""
    return sum(isinstance(b, ReparamBlock) and b.deployed for b in model.modules())


# ---------------------------------------------------------------- exact conversion of every block


@FAST
@given(
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(1, 3),
    BLOCKS,
    ACTS,
    DTYPES,
    st.integers(4, 9),
    st.integers(0, 99),
)
def test_repblock_converts_exactly(c1, c2, n, block, act, dtype, hw, seed):
    torch.manual_seed(seed)
    m = RepBlock(c1, c2, n, block, act)
    check_exact(m, torch.randn(2, c1, hw, hw + 1), dtype, seed)
    if block != "ConvBNAct":
        assert count_deployed_blocks(reparam.reparameterize(m.eval())) == n


@FAST
@given(st.integers(1, 5), st.booleans(), BLOCKS, DTYPES, st.integers(4, 9), st.integers(0, 99))
def test_bottlerep_converts_exactly_and_alpha_stays(c1, same, block, dtype, hw, seed):
    c2 = c1 if same else c1 + 1
    torch.manual_seed(seed)
    m = BottleRep(c1, c2, block)
    assert (m.alpha is not None) == same
    if same:
        with torch.no_grad():
            m.alpha.fill_(0.37)
    check_exact(m, torch.randn(2, c1, hw, hw), dtype, seed)
    deploy = reparam.reparameterize(m.eval())
    if same:
        assert float(deploy.alpha.detach()) == pytest.approx(0.37)


@FAST
@given(
    st.integers(1, 6),
    st.integers(2, 6),
    st.integers(1, 5),
    st.sampled_from([0.5, 2 / 3, 1.0]),
    BLOCKS,
    DTYPES,
    st.integers(0, 99),
)
def test_bepc3_converts_exactly(c1, c2, n, e, block, dtype, seed):
    torch.manual_seed(seed)
    m = BepC3(c1, c2, n, e, block)
    assert len(m.m) == max(n // 2, 1)
    check_exact(m, torch.randn(2, c1, 7, 6), dtype, seed)


@FAST
@given(st.integers(2, 8), st.integers(1, 6), st.sampled_from([3, 5]), ACTS, DTYPES, st.integers(0, 99))
def test_sppf_variants_convert_exactly(c1, c2, k, act, dtype, seed):
    torch.manual_seed(seed)
    x = torch.randn(2, c1, 7, 9)
    for m in (SimSPPF(c1, c2, k, act), SimCSPSPPF(c1, max(c2, 2), k, 0.5, act)):
        y = m.eval()(x)
        assert y.shape[2:] == x.shape[2:]
        check_exact(m, x, dtype, seed)


@FAST
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.integers(2, 5), DTYPES)
def test_bic_converts_exactly(top, same, lower, c2, hw, dtype):
    torch.manual_seed(hw)
    m = BiC([top, same, lower], c2)
    xs = [
        torch.randn(2, top, hw, hw),
        torch.randn(2, same, 2 * hw, 2 * hw),
        torch.randn(2, lower, 4 * hw, 4 * hw),
    ]
    assert m.eval()(xs).shape == (2, c2, 2 * hw, 2 * hw)
    check_exact(m, (xs,), dtype, seed=hw)


def test_reparameterize_twice_equals_once_for_containers():
    m = BepC3(4, 6, 4, 0.5, "QARepVGGBlock").eval()
    randomize_bn_(m, seed=1)
    x = torch.randn(1, 4, 8, 8)
    once = reparam.reparameterize(m)
    twice = reparam.reparameterize(once)
    assert torch.equal(once(x), twice(x))
    assert once.state_dict().keys() == twice.state_dict().keys()
    with torch.no_grad():
        ref, got = m(x), once(x)
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_container_reparameterize_in_place_equals_whole_model_conversion():
    m = BepC3(4, 6, 4, 0.5, "QARepVGGBlock").eval()
    randomize_bn_(m, seed=3)
    converted = reparam.reparameterize(m)
    assert not m.deployed and converted.deployed
    m.reparameterize()
    assert m.deployed
    want = converted.state_dict()
    assert m.state_dict().keys() == want.keys()
    for key, value in m.state_dict().items():
        assert torch.equal(value, want[key]), key


def test_transpose_upsamples_and_counts():
    m = Transpose(3, 5)
    assert m(torch.randn(1, 3, 4, 6)).shape == (1, 5, 8, 12)
    assert sum(p.numel() for p in m.parameters()) == 3 * 5 * 2 * 2 + 5


def test_registry_signatures():
    specs = registered_blocks()
    expected = {
        "RepBlock": "repeat",
        "BepC3": "repeat",
        "BottleRep": "conv",
        "SimSPPF": "conv",
        "SimCSPSPPF": "conv",
        "Transpose": "conv",
        "BiC": "custom",
    }
    assert {n: specs[n].signature for n in expected} == expected


def test_basic_block_choice_by_name_and_class():
    assert isinstance(RepBlock(4, 4, 2, "QARepVGGBlock").conv1, QARepVGGBlock)
    assert isinstance(RepBlock(4, 4, 2, RepVGGBlock).block[0], RepVGGBlock)
    assert isinstance(BepC3(4, 4, 2, block="ConvBNAct").m[0].conv1, ConvBNAct)
    assert isinstance(RepBlock(4, 4, act="relu").conv1.act, nn.ReLU)
    assert isinstance(efficientrep_backbone("n", block="QARepVGGBlock").ERBlock_3[1].conv1, QARepVGGBlock)


def test_orepa_basic_block_converts_exactly():
    m = BepC3(4, 4, 2, 0.5, "OREPA")
    assert isinstance(m.m[0].conv1, OREPA) and resolve_basic_block("OREPA") is OREPA
    check_exact(m, torch.randn(2, 4, 6, 6), torch.float64, seed=0)


def test_every_block_defaults_to_the_model_activation_and_builders_keep_yolov6_relu():
    for m in (
        RepBlock(4, 4, 2),
        BottleRep(4, 4),
        BepC3(4, 4, 2),
        SimSPPF(4, 4),
        SimCSPSPPF(4, 4),
        BiC([4, 4, 4], 4),
    ):
        acts = [a for a in m.modules() if isinstance(a, (nn.ReLU, nn.SiLU))]
        assert acts and all(type(a) is nn.SiLU for a in acts), type(m).__name__
    for variant in ("n", "s", "m"):
        for model in (efficientrep_backbone(variant), reppan_neck(variant)):
            acts = [a for a in model.modules() if isinstance(a, (nn.ReLU, nn.SiLU))]
            assert acts and all(type(a) is nn.ReLU for a in acts), variant
    large = [type(a) for a in efficientrep_backbone("l").modules() if isinstance(a, (nn.ReLU, nn.SiLU))]
    assert set(large) == {nn.SiLU}


# ---------------------------------------------------------------- invalid arguments


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RepBlock(4, 4, 0), "n must be a positive integer"),
        (lambda: RepBlock(0, 4), "c1 must be a positive integer"),
        (
            lambda: RepBlock(4, 4, 1, "Foo"),
            "block must be one of RepVGGBlock, QARepVGGBlock, OREPA, ConvBNAct",
        ),
        (lambda: RepBlock(4, 4, 1, 3), "block must be one of"),
        (lambda: RepBlock(4, 4, 1, "RepVGGBlock", "foo"), "act='foo' is not an activation"),
        (
            lambda: RepBlock(4, 4, 1, True),
            r"RepBlock got a C2f-style shortcut flag True in place of `block`; RepBlock has no shortcut: "
            r"write the row as \[-1, n, RepBlock, \[c2\]\] or \[-1, n, RepBlock, \[c2, 'QARepVGGBlock'\]\]",
        ),
        (lambda: BottleRep(4, 4, False), "BottleRep got a C2f-style shortcut flag False in place of `block`"),
        (
            lambda: BepC3(4, 4, 1, True),
            r"BepC3 got a C2f-style shortcut flag True in place of `e`.*\[c2, e\]",
        ),
        (lambda: RepBlock(4, "64"), "c2 must be a positive integer, got str '64'"),
        (lambda: SimSPPF(4, 4, "5"), "k must be a positive integer, got str '5'"),
        (lambda: SimCSPSPPF(4, 4, 5, "0.5"), "e must be a positive number, got str '0.5'"),
        (lambda: BottleRep(4, 4, "BepC3"), "block must be one of"),
        (lambda: BepC3(4, 4, 1, 0.0), "e must be a positive number"),
        (lambda: BepC3(4, 1, 1, 0.5), r"hidden channels int\(c2 \* e\)"),
        (lambda: SimSPPF(1, 4), "c1=1 must be >= 2"),
        (lambda: SimSPPF(4, 4, 4), "kernel size k=4 must be odd"),
        (lambda: SimCSPSPPF(4, 4, 5, -1.0), "e must be a positive number"),
        (lambda: Transpose(4, 4, 0), "k must be a positive integer"),
        (lambda: BiC([4, 4], 4), "c1 must be three positive channel counts"),
        (lambda: BiC(4, 4), "c1 must be three positive channel counts"),
        (lambda: BiC([4, 4, 4], 0), "c2 must be a positive integer"),
        (lambda: efficientrep_backbone("x"), "variant must be one of n, s, m, l"),
        (lambda: efficientrep_backbone("n", block="DBB"), "block must be one of"),
        (lambda: efficientrep_backbone("n", in_channels=0), "in_channels must be a positive integer"),
        (lambda: reppan_neck("n", in_channels=[8, 16, 32]), "in_channels must be 4 positive integers"),
        (lambda: reppan_neck("n", bic=False, in_channels=[8, 16, 32, 64]), "in_channels must be 3 positive"),
    ],
)
def test_invalid_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_neck_rejects_wrong_number_of_features():
    neck = reppan_neck("n")
    with pytest.raises(ValueError, match="features must hold 4 maps"):
        neck([torch.zeros(1, 64, 8, 8), torch.zeros(1, 128, 4, 4), torch.zeros(1, 256, 2, 2)])


def test_basic_blocks_listed():
    assert BASIC_BLOCKS == ("RepVGGBlock", "QARepVGGBlock", "OREPA", "ConvBNAct")


# ---------------------------------------------------------------- builders: shapes, strides, equivalence


@pytest.mark.parametrize("variant", ["n", "s"])
def test_backbone_and_neck_shapes_and_strides(variant):
    ch = {"n": [32, 64, 128, 256], "s": [64, 128, 256, 512]}[variant]
    backbone = efficientrep_backbone(variant).eval()
    x = torch.randn(1, 3, 64, 64)
    feats = backbone(x)
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 64 // s, 64 // s) for c, s in zip(ch, (4, 8, 16, 32), strict=True)
    ]
    assert backbone.out_channels == ch
    assert backbone.strides == [4, 8, 16, 32]
    neck = reppan_neck(variant).eval()
    outs = neck(feats)
    neck_ch = {"n": [32, 64, 128], "s": [64, 128, 256]}[variant]
    assert [tuple(o.shape) for o in outs] == [
        (1, c, 64 // s, 64 // s) for c, s in zip(neck_ch, (8, 16, 32), strict=True)
    ]
    assert neck.out_channels == neck_ch and neck.strides == [8, 16, 32]
    p345 = efficientrep_backbone(variant, return_p2=False).eval()
    assert [f.shape[1] for f in p345(x)] == ch[1:] and p345.strides == [8, 16, 32]
    assert [o.shape[1] for o in reppan_neck(variant, bic=False)(p345(x))] == neck_ch


def test_n_backbone_and_neck_convert_exactly_fp64():
    backbone = efficientrep_backbone("n")
    check_exact(backbone, torch.randn(1, 3, 64, 64), torch.float64, seed=0)
    deploy = reparam.reparameterize(backbone.eval())
    assert count_deployed_blocks(deploy) == 1 + 4 + (2 + 4 + 6 + 2)  # RepVGG: stem, 4 downsamples, stages
    neck = reppan_neck("n")
    feats = tuple(f.detach() for f in efficientrep_backbone("n").eval()(torch.randn(1, 3, 64, 64)))
    check_exact(neck, (feats,), torch.float64, seed=1, per_block=False)


def test_csp_backbone_converts_exactly_fp32():
    """The m/l code path (BepC3 stages, SimSPPF) at tiny widths: EfficientRep as YOLOv6-m builds it."""
    backbone = EfficientRep([8, 8, 16, 16, 32], [1, 4, 7, 11, 4], csp_e=2 / 3, cspsppf=False)
    assert isinstance(backbone.ERBlock_3[1], BepC3) and isinstance(backbone.ERBlock_5[2], SimSPPF)
    check_exact(backbone, torch.randn(1, 3, 64, 64), torch.float32, seed=2)


# ---------------------------------------------------------------- parameter counts by formula


def conv(ci: int, co: int, k: int, deploy: bool) -> int:
    """Conv(bias=False)+BN (train: weight + BN gamma/beta) or fused conv with bias (deploy)."""
    return k * k * ci * co + (co if deploy else 2 * co)


def rep(ci: int, co: int, s: int, deploy: bool) -> int:
    """RepVGGBlock: 3x3+BN, 1x1+BN, identity BN when ci == co and s == 1; deploy is one 3x3 with bias."""
    if deploy:
        return 9 * ci * co + co
    return conv(ci, co, 3, False) + conv(ci, co, 1, False) + (2 * ci if ci == co and s == 1 else 0)


def plain(ci: int, co: int, s: int, deploy: bool) -> int:
    """ConvBNSiLU 3x3 (YOLOv6-L training_mode conv_silu)."""
    return conv(ci, co, 3, deploy)


def repblock(c: int, n: int, deploy: bool) -> int:
    return n * rep(c, c, 1, deploy)


def bepc3(c: int, n: int, e: float, basic, deploy: bool) -> int:
    """cv1, cv2 (1x1 c -> h), cv3 (1x1 2h -> c), max(n//2, 1) BottleReps of two basic blocks + alpha."""
    h = int(c * e)
    bottle = 2 * basic(h, h, 1, deploy) + 1
    return 2 * conv(c, h, 1, deploy) + conv(2 * h, c, 1, deploy) + max(n // 2, 1) * bottle


def simcspsppf(c: int, deploy: bool) -> int:
    h = c // 2
    return (
        2 * conv(c, h, 1, deploy)
        + conv(h, h, 3, deploy)
        + conv(h, h, 1, deploy)
        + conv(4 * h, h, 1, deploy)
        + conv(h, h, 3, deploy)
        + conv(2 * h, c, 1, deploy)
    )


def simsppf(c: int, deploy: bool) -> int:
    h = c // 2
    return conv(c, h, 1, deploy) + conv(4 * h, c, 1, deploy)


def expected_backbone(ch, reps, kind: str, deploy: bool) -> dict[str, int]:
    """Per-layer counts of YOLOv6 v3.0 EfficientRep (kind 'rep') / CSPBepBackbone ('m' or 'l')."""
    basic = plain if kind == "l" else rep
    out = {"stem": basic(3, ch[0], 2, deploy)}
    for i in range(1, 5):
        out[f"ERBlock_{i + 1}.0"] = basic(ch[i - 1], ch[i], 2, deploy)
        if kind == "rep":
            out[f"ERBlock_{i + 1}.1"] = repblock(ch[i], reps[i], deploy)
        else:
            out[f"ERBlock_{i + 1}.1"] = bepc3(ch[i], reps[i], 2 / 3 if kind == "m" else 1 / 2, basic, deploy)
    out["ERBlock_5.2"] = simcspsppf(ch[4], deploy) if kind == "rep" else simsppf(ch[4], deploy)
    return out


def layer_counts(backbone: nn.Module) -> dict[str, int]:
    out = {"stem": sum(p.numel() for p in backbone.stem.parameters())}
    for i in range(2, 6):
        for j, layer in enumerate(getattr(backbone, f"ERBlock_{i}")):
            out[f"ERBlock_{i}.{j}"] = sum(p.numel() for p in layer.parameters())
    return out


OFFICIAL = {  # scaled by hand from base [64,128,256,512,1024] / [1,6,12,18,6] and the variant multipliers
    "n": ([16, 32, 64, 128, 256], [1, 2, 4, 6, 2], "rep"),  # depth 0.33, width 0.25
    "s": ([32, 64, 128, 256, 512], [1, 2, 4, 6, 2], "rep"),  # depth 0.33, width 0.50
    "m": ([48, 96, 192, 384, 768], [1, 4, 7, 11, 4], "m"),  # depth 0.60, width 0.75, csp_e 2/3
    "l": ([64, 128, 256, 512, 1024], [1, 6, 12, 18, 6], "l"),  # depth 1.0, width 1.0, csp_e 1/2
}


@pytest.mark.parametrize("variant", ["n", "s"])
def test_backbone_layer_params_match_yolov6_formula_train_and_deploy(variant):
    ch, reps, kind = OFFICIAL[variant]
    backbone = efficientrep_backbone(variant).eval()
    assert layer_counts(backbone) == expected_backbone(ch, reps, kind, deploy=False)
    deploy = reparam.reparameterize(backbone)
    assert layer_counts(deploy) == expected_backbone(ch, reps, kind, deploy=True)
    totals = {"n": (3_435_296, 3_133_408), "s": (13_712_960, 12_526_528)}[variant]
    assert (sum(layer_counts(backbone).values()), sum(layer_counts(deploy).values())) == totals


@pytest.mark.parametrize("variant", ["m", "l"])
def test_csp_backbone_layer_params_match_yolov6_formula(variant):
    ch, reps, kind = OFFICIAL[variant]
    with torch.device("meta"):
        backbone = efficientrep_backbone(variant)
    assert layer_counts(backbone) == expected_backbone(ch, reps, kind, deploy=False)


def expected_neck(p: list[int], n: list[int], r: list[int], deploy: bool) -> int:
    """YOLOv6 v3.0 RepBiFPANNeck (n/s): reduce, BiC, RepBlock top-down; 3x3 s2 conv, RepBlock bottom-up."""

    def bic(top: int, same: int, lower: int, c: int) -> int:
        up = 4 * top * c + c
        return (
            up
            + conv(same, c, 1, deploy)
            + conv(lower, c, 1, deploy)
            + conv(c, c, 3, deploy)
            + conv(3 * c, c, 1, deploy)
        )

    def stage(ci: int, co: int, k: int) -> int:
        return rep(ci, co, 1, deploy) + (k - 1) * rep(co, co, 1, deploy)

    p2, p3, p4, p5 = p
    return (
        conv(p5, n[0], 1, deploy)
        + bic(n[0], p4, p3, n[0])
        + stage(n[0], n[0], r[0])
        + conv(n[0], n[1], 1, deploy)
        + bic(n[1], p3, p2, n[1])
        + stage(n[1], n[1], r[1])
        + conv(n[1], n[2], 3, deploy)
        + stage(n[1] + n[2], n[3], r[2])
        + conv(n[3], n[4], 3, deploy)
        + stage(n[0] + n[4], n[5], r[3])
    )


@pytest.mark.parametrize(
    ("variant", "p", "n"),
    [
        ("n", [32, 64, 128, 256], [64, 32, 32, 64, 64, 128]),
        ("s", [64, 128, 256, 512], [128, 64, 64, 128, 128, 256]),
    ],
)
def test_neck_params_match_yolov6_formula(variant, p, n):
    neck = reppan_neck(variant).eval()
    r = [4, 4, 4, 4]
    assert sum(q.numel() for q in neck.parameters()) == expected_neck(p, n, r, deploy=False)
    deploy = reparam.reparameterize(copy.deepcopy(neck))
    assert sum(q.numel() for q in deploy.parameters()) == expected_neck(p, n, r, deploy=True)


def effidehead_deploy(channels: list[int], reg_max: int, nc: int = 80) -> int:
    """YOLOv6 v3.0 EffiDeHead inference branches per level: 1x1 stem, 3x3 cls/reg convs, 1x1 predictors."""
    return sum(
        conv(c, c, 1, True)
        + 2 * conv(c, c, 3, True)
        + (c * nc + nc)
        + (c * 4 * (reg_max + 1) + 4 * (reg_max + 1))
        for c in channels
    )


@pytest.mark.parametrize(
    ("variant", "head_channels", "reg_max", "published_m"),
    [("s", [64, 128, 256], 0, 18.5), ("m", [96, 192, 384], 16, 34.9), ("l", [128, 256, 512], 16, 59.6)],
)
def test_deploy_backbone_and_neck_plus_head_formula_match_published_totals(
    variant, head_channels, reg_max, published_m
):
    """Cross-check with the YOLOv6 v3.0 README (deploy params, M): backbone + neck built, head by formula."""
    body = nn.Sequential(efficientrep_backbone(variant), reppan_neck(variant)).eval()
    deploy = sum(p.numel() for p in reparam.reparameterize(body, inplace=True).parameters())
    assert round((deploy + effidehead_deploy(head_channels, reg_max)) / 1e6, 1) == published_m
