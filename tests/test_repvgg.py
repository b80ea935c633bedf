"""RepVGGBlock and QARepVGGBlock: exact conversion, parameter counts, argument checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reparam
from conftest import TOL, n_params
from reparam import QARepVGGBlock, RepVGGBlock
from reparam.convert import randomize_bn_


@st.composite
def block_case(draw):
    g = draw(st.sampled_from([1, 2, "dw"]))
    c1 = draw(st.sampled_from([2, 4, 6]))
    same = draw(st.booleans())
    c2 = c1 if same or g == "dw" else draw(st.sampled_from([2, 4, 8]))
    groups = c1 if g == "dw" else g
    k = draw(st.sampled_from([1, 3, 5]))
    s = draw(st.sampled_from([1, 2]))
    d = draw(st.sampled_from([1, 2])) if k > 1 else 1
    h, w = draw(st.integers(5, 11)), draw(st.integers(5, 11))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return c1, c2, k, s, groups, d, h, w, dtype


@settings(max_examples=25, deadline=None)
@given(block_case(), st.sampled_from(["repvgg", "qa", "qa_v2"]), st.integers(0, 1000))
def test_block_converts_exactly(case, kind, seed):
    c1, c2, k, s, g, d, h, w, dtype = case
    if kind == "qa_v2":
        d = 1
    torch.manual_seed(seed)
    block = {
        "repvgg": lambda: RepVGGBlock(c1, c2, k, s, g=g, d=d),
        "qa": lambda: QARepVGGBlock(c1, c2, k, s, g=g, d=d),
        "qa_v2": lambda: QARepVGGBlock(c1, c2, k, s, g=g, d=d, avg=True),
    }[kind]()
    x = torch.randn(2, c1, h, w, dtype=dtype)
    report = reparam.verify(block, x, dtype=dtype, randomize_bn=True, seed=seed, rtol=TOL[dtype])
    assert report.ok, str(report)
    assert report.max_rel <= TOL[dtype]
    assert len(report.blocks) == 1


def _random_eval_block(block: nn.Module) -> nn.Module:
    randomize_bn_(block, seed=3)
    return block.eval()


@pytest.mark.parametrize("cls", [RepVGGBlock, QARepVGGBlock])
def test_converted_block_is_one_biased_conv(cls):
    block = _random_eval_block(cls(4, 8, 3, 2, g=2))
    block.reparameterize()
    conv = block.conv
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    assert (
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.groups,
    ) == (
        4,
        8,
        (3, 3),
        (2, 2),
        (1, 1),
        2,
    )
    assert sum(p.numel() for p in block.parameters()) == 8 * 2 * 9 + 8


def test_parameter_counts_are_exact():
    # kxk conv + BN, 1x1 conv + BN, identity BN (c1 == c2, s == 1).
    assert n_params(RepVGGBlock(8, 8, 3)) == 8 * 8 * 9 + 16 + 8 * 8 + 16 + 16
    assert n_params(RepVGGBlock(8, 16, 3, 2)) == 16 * 8 * 9 + 32 + 16 * 8 + 32
    assert n_params(RepVGGBlock(8, 8, 3, g=4)) == 8 * 2 * 9 + 16 + 8 * 2 + 16 + 16
    assert n_params(RepVGGBlock(8, 8, 1)) == 8 * 8 + 16 + 16
    # kxk conv + BN, bare 1x1 conv, post BN; identity and avg pool carry no parameters.
    assert n_params(QARepVGGBlock(8, 8, 3)) == 8 * 8 * 9 + 16 + 8 * 8 + 16
    assert n_params(QARepVGGBlock(8, 8, 3, avg=True)) == 8 * 8 * 9 + 16 + 8 * 8 + 16
    assert n_params(QARepVGGBlock(8, 16, 5, 2)) == 16 * 8 * 25 + 32 + 16 * 8 + 32


def test_branch_structure_follows_the_papers():
    assert RepVGGBlock(4, 4, s=1).rbr_identity is not None
    assert RepVGGBlock(4, 4, s=2).rbr_identity is None
    assert RepVGGBlock(4, 8).rbr_identity is None
    qa = QARepVGGBlock(4, 4, avg=True)
    assert qa.has_identity and isinstance(qa.rbr_avg, nn.AvgPool2d)
    assert QARepVGGBlock(4, 8, avg=True).rbr_avg is None
    assert isinstance(RepVGGBlock(4, 4).act, nn.SiLU)
    assert isinstance(RepVGGBlock(4, 4, act=False).act, nn.Identity)
    assert isinstance(RepVGGBlock(4, 4, act=nn.ReLU()).act, nn.ReLU)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"c1": 4, "c2": 4, "k": 2}, "kernel size k=2 must be odd"),
        ({"c1": 4, "c2": 4, "k": 3, "p": 0}, r"padding p=0 must equal d\*\(k//2\)=1"),
        ({"c1": 6, "c2": 4, "k": 3, "g": 4}, "c1=6 must be divisible by groups g=4"),
        ({"c1": 4, "c2": 6, "k": 3, "g": 4}, "c2=6 must be divisible by groups g=4"),
        ({"c1": 0, "c2": 4}, "c1 must be a positive integer"),
        ({"c1": 4, "c2": 4, "s": 0}, "s must be a positive integer"),
        ({"c1": 4, "c2": 4, "act": "swish"}, "act='swish' is not an activation"),
        ({"c1": 4, "c2": "8"}, "c2 must be a positive integer, got str '8'"),
    ],
)
@pytest.mark.parametrize("cls", [RepVGGBlock, QARepVGGBlock])
def test_invalid_arguments_raise_value_error(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_qarepvgg_v2_rejects_dilation():
    with pytest.raises(ValueError, match="dilation d=2 is not supported with avg=True"):
        QARepVGGBlock(4, 4, 3, d=2, avg=True)
    with pytest.raises(ValueError, match="avg must be True or False, got str 'yes'"):
        QARepVGGBlock(4, 4, 3, avg="yes")


def test_equivalent_kernel_is_differentiable():
    block = RepVGGBlock(4, 4, 3)
    weight, bias = block.equivalent_kernel_bias()
    (weight.square().sum() + bias.sum()).backward()
    assert block.rbr_1x1.conv.weight.grad is not None
    assert block.rbr_identity.weight.grad is not None
