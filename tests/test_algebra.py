"""Every kernel-algebra transform against the direct PyTorch computation it replaces."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import TOL, rel_err
from reparam import algebra

DTYPES = st.sampled_from([torch.float32, torch.float64])
FAST = settings(max_examples=25, deadline=None)


def random_bn(c: int, dtype: torch.dtype, seed: int, affine: bool = True) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = (
        nn.BatchNorm2d(c, eps=float(torch.rand(1, generator=g)) * 1e-2 + 1e-5, affine=affine).to(dtype).eval()
    )
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.3)
        if affine:
            bn.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64))
            bn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
    return bn


@st.composite
def conv_geometry(draw):
    g = draw(st.sampled_from([1, 2, 3]))
    cin = g * draw(st.integers(1, 3))
    cout = g * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 3, 5]))
    s = draw(st.sampled_from([1, 2]))
    h, w = draw(st.integers(k, 9)), draw(st.integers(k, 9))
    return cin, cout, k, s, g, h, w


@FAST
@given(conv_geometry(), DTYPES, st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_fold_bn_matches_conv_then_bn(geo, dtype, with_bias, affine, seed):
    cin, cout, k, s, g, h, w = geo
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=with_bias).to(dtype)
    bn = random_bn(cout, dtype, seed, affine)
    x = torch.randn(2, cin, h, w, dtype=dtype)
    weight, bias = algebra.fold_bn(conv.weight, bn, conv.bias)
    assert weight.dtype == dtype and bias.dtype == dtype
    got = F.conv2d(x, weight, bias, s, k // 2, 1, g)
    with torch.no_grad():
        assert rel_err(got, bn(conv(x))) <= TOL[dtype]


def test_fold_bn_computes_in_fp32_for_half_inputs():
    bn = random_bn(4, torch.float16, 0)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float16)
    weight, bias = algebra.fold_bn(w, bn)
    assert weight.dtype == torch.float32 and bias.dtype == torch.float32
    expected = w.double() * (bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()).view(-1, 1, 1, 1)
    assert rel_err(weight, expected) < 1e-6


def test_fold_bn_uses_the_modules_eps():
    bn = random_bn(3, torch.float64, 1)
    bn.eps = 0.5
    weight, _ = algebra.fold_bn(torch.ones(3, 1, 1, 1, dtype=torch.float64), bn)
    torch.testing.assert_close(weight.flatten(), bn.weight / (bn.running_var + 0.5).sqrt())


def test_fold_bn_rejects_mismatched_channels_and_untracked_stats():
    with pytest.raises(ValueError, match="BN has 3 channels but the kernel has 4"):
        algebra.fold_bn(torch.ones(4, 1, 1, 1), random_bn(3, torch.float32, 0))
    with pytest.raises(ValueError, match="track running statistics"):
        algebra.fold_bn(torch.ones(3, 1, 1, 1), nn.BatchNorm2d(3, track_running_stats=False))


@FAST
@given(conv_geometry(), DTYPES, st.integers(2, 4), st.integers(0, 2**16))
def test_add_branches_equals_sum_of_convs(geo, dtype, n, seed):
    cin, cout, k, s, g, h, w = geo
    gen = torch.Generator().manual_seed(seed)
    pairs = [
        (
            torch.randn(cout, cin // g, k, k, generator=gen, dtype=dtype),
            torch.randn(cout, generator=gen, dtype=dtype),
        )
        for _ in range(n)
    ]
    x = torch.randn(1, cin, h, w, generator=gen, dtype=dtype)
    weight, bias = algebra.add_branches(*pairs)
    expected = sum(F.conv2d(x, wk, bk, s, k // 2, 1, g) for wk, bk in pairs)
    assert rel_err(F.conv2d(x, weight, bias, s, k // 2, 1, g), expected) <= TOL[dtype]


def test_add_branches_rejects_mixed_shapes_and_nothing():
    with pytest.raises(ValueError, match="kernel shapes differ"):
        algebra.add_branches((torch.ones(2, 2, 3, 3), torch.ones(2)), (torch.ones(2, 2, 1, 1), torch.ones(2)))
    with pytest.raises(ValueError, match="at least one"):
        algebra.add_branches()


@FAST
@given(conv_geometry(), DTYPES, st.sampled_from([1, 3]), st.integers(0, 2**16))
def test_pad_kernel_preserves_conv_with_aligned_padding(geo, dtype, small, seed):
    cin, cout, big, s, g, h, w = geo
    if small > big:
        small, big = big, small
    gen = torch.Generator().manual_seed(seed)
    kernel = torch.randn(cout, cin // g, small, small, generator=gen, dtype=dtype)
    x = torch.randn(2, cin, h, w, generator=gen, dtype=dtype)
    p_big = big // 2
    p_small = algebra.padding_for_branch(p_big, big, small)
    expected = F.conv2d(x, kernel, None, s, p_small, 1, g)
    got = F.conv2d(x, algebra.pad_kernel(kernel, big), None, s, p_big, 1, g)
    assert rel_err(got, expected) <= TOL[dtype]


def test_padding_rules_are_enforced():
    with pytest.raises(ValueError, match=r"\(K - k\) must be even"):
        algebra.padding_for_branch(1, 3, 2)
    with pytest.raises(ValueError, match="too small"):
        algebra.padding_for_branch(0, 3, 1)
    with pytest.raises(ValueError, match="must be even"):
        algebra.pad_kernel(torch.ones(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        algebra.pad_kernel(torch.ones(1, 1, 3, 3), 1)
    assert algebra.padding_for_branch(2, 5, 1, dilation=1) == 0
    assert algebra.padding_for_branch(4, 5, 3, dilation=2) == 2


@FAST
@given(st.integers(1, 4), st.sampled_from([1, 2, 4]), st.sampled_from([1, 3, 5]), DTYPES)
def test_identity_kernel_is_identity(per_group, g, k, dtype):
    c = per_group * g
    x = torch.randn(2, c, 7, 6, dtype=dtype)
    kernel = algebra.identity_kernel(c, g, k, dtype=dtype)
    assert kernel.shape == (c, c // g, k, k)
    assert torch.equal(F.conv2d(x, kernel, None, 1, k // 2, 1, g), x)


def test_identity_kernel_rejects_bad_arguments():
    with pytest.raises(ValueError, match="divisible by groups"):
        algebra.identity_kernel(5, 2)
    with pytest.raises(ValueError, match="must be odd"):
        algebra.identity_kernel(4, 1, 2)


@FAST
@given(
    st.integers(1, 4), st.sampled_from([1, 2, 4]), st.sampled_from([1, 3, 5]), st.sampled_from([1, 2]), DTYPES
)
def test_avgpool_kernel_matches_avg_pool(per_group, g, k, s, dtype):
    c = per_group * g
    x = torch.randn(2, c, 9, 8, dtype=dtype)
    kernel = algebra.avgpool_kernel(c, g, k, dtype=dtype)
    expected = F.avg_pool2d(x, k, s, k // 2, count_include_pad=True)
    assert rel_err(F.conv2d(x, kernel, None, s, k // 2, 1, g), expected) <= TOL[dtype]


@FAST
@given(
    st.sampled_from([1, 2, 4]),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from([1, 3, 5]),
    st.sampled_from([1, 2]),
    DTYPES,
    st.integers(0, 2**16),
)
def test_merge_1x1_kxk_matches_sequence_with_bias_padding(g, ig, dg, eg, k, s, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    cin, mid, cout = g * ig, g * dg, g * eg
    k1 = torch.randn(mid, ig, 1, 1, generator=gen, dtype=dtype)
    b1 = torch.randn(mid, generator=gen, dtype=dtype)
    k2 = torch.randn(cout, dg, k, k, generator=gen, dtype=dtype)
    b2 = torch.randn(cout, generator=gen, dtype=dtype)
    x = torch.randn(2, cin, 8, 7, generator=gen, dtype=dtype)
    p = k // 2
    y = F.conv2d(x, k1, b1, 1, 0, 1, g)
    # Pad the intermediate map with b1 (DBB's BN-and-pad), then the kxk conv without padding.
    y = F.pad(y - b1.view(1, -1, 1, 1), [p] * 4) + b1.view(1, -1, 1, 1)
    expected = F.conv2d(y, k2, b2, s, 0, 1, g)
    weight, bias = algebra.merge_1x1_kxk(k1, b1, k2, b2, groups=g)
    assert rel_err(F.conv2d(x, weight, bias, s, p, 1, g), expected) <= TOL[dtype]


def test_merge_1x1_kxk_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must be 1x1"):
        algebra.merge_1x1_kxk(torch.ones(2, 2, 3, 3), None, torch.ones(2, 2, 3, 3), None)
    with pytest.raises(ValueError, match="expects 3 channels, first gives 2"):
        algebra.merge_1x1_kxk(torch.ones(2, 2, 1, 1), None, torch.ones(2, 3, 3, 3), None)


@FAST
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from([1, 3, 5]),
    st.sampled_from([1, 3]),
    DTYPES,
)
def test_compose_sequential_equals_two_valid_convs(cin, mid, cout, k1, k2, dtype):
    gen = torch.Generator().manual_seed(cin * 100 + mid * 10 + cout)
    first = torch.randn(mid, cin, k1, k1, generator=gen, dtype=dtype)
    second = torch.randn(cout, mid, k2, k2, generator=gen, dtype=dtype)
    x = torch.randn(2, cin, 11, 10, generator=gen, dtype=dtype)
    expected = F.conv2d(F.conv2d(x, first), second)
    composed = algebra.compose_sequential(first, second)
    assert composed.shape == (cout, cin, k1 + k2 - 1, k1 + k2 - 1)
    assert rel_err(F.conv2d(x, composed), expected) <= TOL[dtype]


def test_compose_sequential_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="expects 3 channels, first gives 2"):
        algebra.compose_sequential(torch.ones(2, 1, 3, 3), torch.ones(1, 3, 3, 3))


def test_algebra_is_differentiable():
    w = torch.randn(4, 2, 1, 1, requires_grad=True)
    bn = random_bn(4, torch.float32, 3)
    bn.train()
    weight, bias = algebra.fold_bn(algebra.pad_kernel(w, 3), bn)
    (weight.sum() + bias.sum()).backward()
    assert w.grad is not None and bn.weight.grad is not None and bn.bias.grad is not None
