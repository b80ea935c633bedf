"""DBB: exact conversion (BN-and-pad borders included), branch structure, parameter counts, arguments."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reparam
from conftest import TOL, n_params
from reparam.blocks.dbb import DBB, BNAndPad, IdentityConv1x1, dbb_internal_width
from reparam.blocks.registry import get_block
from reparam.convert import randomize_bn_


@st.composite
def dbb_case(draw):
    g = draw(st.sampled_from([1, 2, "dw"]))
    c1 = draw(st.sampled_from([2, 4, 6]))
    c2 = c1 if g == "dw" or draw(st.booleans()) else draw(st.sampled_from([2, 4, 8]))
    groups = c1 if g == "dw" else g
    k = draw(st.sampled_from([3, 5]))
    s = draw(st.sampled_from([1, 2]))
    h, w = draw(st.integers(5, 11)), draw(st.integers(5, 11))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return c1, c2, k, s, groups, h, w, dtype


@settings(max_examples=25, deadline=None)
@given(dbb_case(), st.integers(0, 1000))
def test_dbb_converts_exactly(case, seed):
    c1, c2, k, s, g, h, w, dtype = case
    torch.manual_seed(seed)
    block = DBB(c1, c2, k, s, g=g)
    with torch.no_grad():  # move the identity-initialised 1x1 off identity
        block.dbb_1x1_kxk.idconv1.weight.normal_(0, 0.3)
    x = torch.randn(2, c1, h, w, dtype=dtype)
    report = reparam.verify(block, x, dtype=dtype, randomize_bn=True, seed=seed, rtol=TOL[dtype])
    assert report.ok, str(report)
    assert report.max_rel <= TOL[dtype]


def test_bn_and_pad_fills_the_border_with_the_bn_value_of_zero():
    bn = BNAndPad(3, 2)
    randomize_bn_(bn, seed=1)
    bn.eval()
    x = torch.randn(1, 3, 4, 5)
    y = bn(x)
    assert y.shape == (1, 3, 8, 9)
    zero = bn(torch.zeros(1, 3, 1, 1))[:, :, 2:3, 2:3]  # BN output for a zero input
    border = torch.ones(8, 9, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    torch.testing.assert_close(y[..., border], zero.flatten(2).expand(1, 3, int(border.sum())))
    torch.testing.assert_close(
        y[:, :, 2:-2, 2:-2],
        nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps),
    )


def test_identity_conv_starts_as_identity_at_both_widths():
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(IdentityConv1x1(4, 4, 2)(x), x)
    doubled = IdentityConv1x1(4, 8, 4)(x)  # depthwise, width 2 I: each channel twice within its group
    torch.testing.assert_close(doubled, x.repeat_interleave(2, dim=1))


@pytest.mark.parametrize(("c1", "c2", "k", "g"), [(8, 16, 3, 1), (8, 8, 3, 2), (8, 8, 3, 8), (16, 8, 5, 8)])
def test_parameter_count_matches_the_reference_branches(c1, c2, k, g):
    block = DBB(c1, c2, k, g=g)
    ig, t = c1 // g, dbb_internal_width(c1, c2, g)
    assert t == (c1 if g < c2 else 2 * c1)
    n = c2 * ig * k * k + 2 * c2  # kxk + BN
    n += c2 * ig + 2 * c2 if g < c2 else 0  # 1x1 + BN
    n += (c2 * ig + 2 * c2 if g < c2 or c1 != c2 else 0) + 2 * c2  # [1x1 + BN-and-pad] -> avg -> BN
    n += t * ig + 2 * t + c2 * (t // g) * k * k + 2 * c2  # 1x1 -> BN-and-pad -> kxk -> BN
    assert n_params(block) == n
    assert (block.dbb_1x1 is None) == (g == c2)


def test_depthwise_block_has_the_reference_structure():
    block = DBB(6, 6, 3, g=6)
    assert block.dbb_1x1 is None
    assert [n for n, _ in block.dbb_avg.named_children()] == ["avg", "avgbn"]
    assert block.dbb_avg.avg.padding == 1
    assert block.dbb_1x1_kxk.idconv1.weight.shape == (12, 1, 1, 1)
    assert get_block("DBB") is DBB


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DBB(4, 4, 3, p=0), "padding p=0 must equal k//2=1"),
        (lambda: DBB(4, 4, 3, d=2), "dilation d=2"),
        (lambda: DBB(4, 4, 2), "k=2 must be odd"),
        (lambda: DBB(4, 6, 3, g=4), "c2=6 must be divisible by groups g=4"),
        (lambda: DBB(4, 4, 3, s=0), "s must be a positive integer"),
        (lambda: BNAndPad(4, -1), "pad=-1"),
    ],
)
def test_invalid_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
