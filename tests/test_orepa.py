"""OREPA family: exact conversion, the paper's branches, one conv per block, parameter counts, arguments."""

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reparam
from reparam.blocks.orepa import (
    OREPA,
    OREPA_1x1,
    OREPA_LargeConv,
    OREPAKernel,
    OREPARepVGG,
    create_orepa,
    frequency_prior,
    orepa_internal_width,
)
from reparam.blocks.registry import create_block, get_block

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@st.composite
def orepa_case(draw):
    kind = draw(st.sampled_from(["orepa", "orepa_1x1", "repvgg", "large"]))
    g = 1 if kind == "large" else draw(st.sampled_from([1, 2, "dw"]))
    c1 = draw(st.sampled_from([2, 4, 6]))
    c2 = c1 if g == "dw" or draw(st.booleans()) else draw(st.sampled_from([2, 4, 8]))
    groups = c1 if g == "dw" else g
    k = {"orepa": draw(st.sampled_from([3, 5])), "orepa_1x1": 1, "repvgg": 3, "large": 5}[kind]
    s = draw(st.sampled_from([1, 2]))
    h, w = draw(st.integers(5, 11)), draw(st.integers(5, 11))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return kind, c1, c2, k, s, groups, h, w, dtype


def _build(kind: str, c1: int, c2: int, k: int, s: int, g: int) -> nn.Module:
    if kind == "repvgg":
        return OREPARepVGG(c1, c2, k, s, g=g)
    return create_orepa(c1, c2, k, s, g=g, large=kind == "large")


def _perturb_(module: nn.Module, seed: int) -> None:
    """Move every branch parameter (scales, identity deltas) off its initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "vector" in name or "idconv1" in name or "l2i" in name:
                p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) * 0.3)


@settings(max_examples=25, deadline=None)
@given(orepa_case(), st.integers(0, 1000))
def test_orepa_family_converts_exactly(case, seed):
    kind, c1, c2, k, s, g, h, w, dtype = case
    torch.manual_seed(seed)
    block = _build(kind, c1, c2, k, s, g)
    _perturb_(block, seed)
    x = torch.randn(2, c1, h, w, dtype=dtype)
    report = reparam.verify(block, x, dtype=dtype, randomize_bn=True, seed=seed, rtol=TOL[dtype])
    assert report.ok, str(report)
    assert report.max_rel <= TOL[dtype]
    assert len(report.blocks) == 1


def _branch_sum(gen: OREPAKernel, x: torch.Tensor, s: int) -> torch.Tensor:
    """Run OREPA's six branches as real, separate linear convs (the paper's definition) and add them."""
    o, g, k, p = gen.c2, gen.g, gen.k, gen.k // 2
    v = gen.vector.view(-1, 1, o, 1, 1)
    mean, prior = gen.fixed_filters[0].view(o, 1, k, k), gen.fixed_filters[1].view(o, 1, k, k)
    ys = [F.conv2d(x, gen.weight_origin, None, s, p, 1, g)]
    ys.append(F.conv2d(F.conv2d(x, gen.weight_avg, groups=g), mean, None, s, p, 1, o))
    ys.append(F.conv2d(F.conv2d(x, gen.weight_prior, groups=g), prior, None, s, p, 1, o))
    c1 = gen.weight_1x1_kxk_idconv1 + gen.id_tensor.view(gen.t, -1, 1, 1)
    ys.append(F.conv2d(F.conv2d(x, c1, groups=g), gen.weight_1x1_kxk_conv2, None, s, p, 1, g))
    if gen.weight_1x1 is not None:
        ys.append(F.conv2d(x, gen.weight_1x1, None, s, 0, 1, g))
    ys.append(F.conv2d(F.conv2d(x, gen.weight_dw, None, s, p, 1, gen.c1), gen.weight_pw, groups=g))
    return sum(vi * yi for vi, yi in zip(v, ys, strict=True))


@pytest.mark.parametrize(
    ("c1", "c2", "k", "s", "g", "branch_1x1"),
    [(4, 6, 3, 1, 1, True), (4, 8, 5, 2, 2, True), (6, 6, 3, 1, 6, True), (4, 4, 3, 2, 1, False)],
)
def test_generated_kernel_equals_the_papers_separate_branches(c1, c2, k, s, g, branch_1x1):
    torch.manual_seed(0)
    gen = OREPAKernel(c1, c2, k, g, branch_1x1=branch_1x1).double()
    _perturb_(gen, 1)
    x = torch.randn(2, c1, 9, 7, dtype=torch.float64)
    one_conv = F.conv2d(x, gen(), None, s, k // 2, 1, g)
    torch.testing.assert_close(one_conv, _branch_sum(gen, x, s), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("c1", "c2", "k", "g", "branch_1x1"),
    [(2, 4, 3, 1, True), (4, 4, 3, 2, True), (4, 4, 3, 4, True), (6, 6, 3, 6, True), (2, 3, 5, 1, False)],
)
def test_hand_written_backward_matches_numerical_gradients(c1, c2, k, g, branch_1x1):
    torch.manual_seed(0)
    gen = OREPAKernel(c1, c2, k, g, branch_1x1=branch_1x1).double()
    _perturb_(gen, 2)
    names = [n for n, _ in gen.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in gen.parameters())

    def generate(*ps):
        return torch.func.functional_call(gen, dict(zip(names, ps, strict=True)), ())

    assert torch.autograd.gradcheck(generate, params, eps=1e-6, atol=1e-8, fast_mode=True)


class _ConvCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inputs: list[torch.Tensor] = []
        real = F.conv2d

        def counting(inp, *args, **kwargs):
            self.inputs.append(inp)
            return real(inp, *args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "conv2d", counting)


@pytest.mark.parametrize(
    "make", [lambda: OREPA(4, 6, 3, 2), lambda: OREPA(6, 6, 3, g=6), lambda: OREPA_1x1(4, 4)]
)
def test_training_forward_runs_exactly_one_convolution(monkeypatch, make):
    block = make().train()
    x = torch.randn(2, block.c1, 8, 8)
    counter = _ConvCounter(monkeypatch)
    block(x).sum().backward()
    assert len(counter.inputs) == 1, "OREPA must not run a convolution per branch"
    assert counter.inputs[0] is x
    assert sum(isinstance(m, nn.BatchNorm2d) for m in block.modules()) == 1


def test_one_feature_map_convolution_per_block_in_a_stack(monkeypatch):
    net = nn.Sequential(OREPA(3, 4, 3, 2), OREPA(4, 4), OREPA_LargeConv(4, 8, 7)).train()
    block_inputs: list[torch.Tensor] = []
    for block in net:
        block.register_forward_pre_hook(lambda _m, args: block_inputs.append(args[0]))
    counter = _ConvCounter(monkeypatch)
    net(torch.randn(2, 3, 12, 12))
    assert len(block_inputs) == 3
    for x in block_inputs:  # the large kernel's composition convolves kernels, never the feature map
        assert sum(inp is x for inp in counter.inputs) == 1


def test_kernel_is_regenerated_and_every_parameter_trains():
    block = OREPA(4, 4).train()
    x = torch.randn(2, 4, 6, 6)
    block(x).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        # the prior's scale starts at 0 (paper), so its 1x1 factor only trains once the scale has moved
        assert (p.grad.abs().sum() > 0) == (name != "gen.weight_prior"), name
    assert (block.gen.vector.grad[2].abs() > 0).all()
    before = block.eval()(x)
    with torch.no_grad():
        block.gen.vector[0].add_(1.0)
    assert not torch.allclose(block(x), before)


def _orepa_kernel_params(c1: int, c2: int, k: int, g: int, branch_1x1: bool = True) -> int:
    ig, t = c1 // g, orepa_internal_width(c1, g)
    n = c2 * ig * k * k  # origin
    n += 2 * c2 * ig  # avg and prior 1x1 factors
    n += c2 * ig if branch_1x1 else 0  # 1x1
    n += t * ig + c2 * (t // g) * k * k  # 1x1 -> kxk
    n += 8 * c1 * k * k + c2 * (8 * c1 // g)  # depthwise -> pointwise
    return n + (6 if branch_1x1 else 5) * c2  # scaling vectors


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("c1", "c2", "k", "g"), [(16, 32, 3, 1), (16, 16, 3, 4), (8, 8, 3, 8), (12, 24, 5, 6)]
)
def test_orepa_parameter_count_matches_the_reference_widths(c1, c2, k, g):
    block = OREPA(c1, c2, k, g=g)
    assert block.gen.t == (c1 if g <= 4 else 2 * c1)
    assert _count(block) == _orepa_kernel_params(c1, c2, k, g) + 2 * c2  # + BN affine
    # explicit numbers for the common ResNet case (64 -> 64, 3x3): 37 + 12 + 2 parts of 64*64
    assert _count(OREPA(64, 64)) == 64 * 64 * (9 + 3 + 1 + 9 + 8) + 8 * 64 * 9 + 6 * 64 + 2 * 64


def test_variant_parameter_counts():
    assert _count(OREPA_1x1(8, 12)) == 12 * 8 + 8 * 8 + 12 * 8 + 2 * 12 + 2 * 12  # T = min(c1, c2) = 8
    assert _count(OREPA_1x1(12, 8, g=2)) == 8 * 6 + 8 * 6 + 8 * 4 + 2 * 8 + 2 * 8  # T = 8, grouped
    repvgg = OREPARepVGG(8, 8, 3, g=2)
    expected = _orepa_kernel_params(8, 8, 3, 2, branch_1x1=False) + 2 * 8  # kxk generator + BN
    expected += 8 * 4 + 2 * 8 + 2 * 8  # BN'd 1x1 and identity BN
    assert _count(repvgg) == expected
    large = OREPA_LargeConv(4, 8, 7)
    stages = _orepa_kernel_params(4, 8, 3, 1) + 2 * _orepa_kernel_params(8, 8, 3, 1)
    assert _count(large) == stages + 2 * 8


def test_initial_values_follow_the_paper():
    block = OREPA(6, 10, 3, init_hyper_para=1.0)  # the reference's init (reparam's default scales it by 0.2)
    gen = block.gen
    expected = torch.tensor([0.25, 0.25, 0.0, 0.5, 1.0, 0.5])[:, None].expand(6, 10)
    torch.testing.assert_close(gen.vector.detach(), expected)
    assert torch.count_nonzero(gen.weight_1x1_kxk_idconv1) == 0
    c1 = gen.weight_1x1_kxk_idconv1.flatten(1) + gen.id_tensor
    torch.testing.assert_close(c1, torch.eye(6))
    bound = math.sqrt(6.0 / (6 * 9))  # kaiming uniform, a = 0, fan_in = c1/g * k * k
    assert gen.weight_origin.abs().max() <= bound and gen.weight_origin.abs().max() > 0.8 * bound
    default = OREPA(6, 10, 3).gen.weight_origin.abs().max()
    assert 0.2 * 0.8 * bound < default <= 0.2 * bound
    torch.testing.assert_close(OREPA_1x1(4, 4).vector.detach(), torch.tensor([[1.0] * 4, [0.5] * 4]))
    assert OREPARepVGG(4, 4).gen.vector.shape == (5, 4)


@pytest.mark.parametrize("k", [3, 5, 7, 9])
@pytest.mark.parametrize("channels", [1, 2, 5, 16, 33])
def test_frequency_prior_has_no_zero_or_constant_filter(k, channels):
    prior = frequency_prior(channels, k, torch.float64)
    assert prior.shape == (channels, k, k)
    flat = prior.flatten(1)
    assert (flat.abs().amax(1) > 0.1).all()
    assert ((flat.amax(1) - flat.amin(1)) > 0.1).all()


def test_frequency_prior_is_the_dct_ii_basis():
    prior = frequency_prior(4, 3, torch.float64)
    h = torch.arange(3, dtype=torch.float64) + 0.5
    torch.testing.assert_close(prior[0], torch.cos(math.pi * h / 3)[:, None].expand(3, 3))  # rows, f=1
    torch.testing.assert_close(prior[1], torch.cos(2 * math.pi * h / 3)[:, None].expand(3, 3))  # rows, f=2
    torch.testing.assert_close(prior[2], torch.cos(math.pi * h / 3)[None, :].expand(3, 3))  # columns, f=1
    fixed = OREPA(4, 6).gen.fixed_filters.view(3, 6, 3, 3)
    torch.testing.assert_close(fixed[0], torch.full((6, 3, 3), 1 / 9))
    torch.testing.assert_close(fixed[1], frequency_prior(6, 3))
    torch.testing.assert_close(fixed[2], F.pad(torch.ones(6, 1, 1), [1, 1, 1, 1]))


@pytest.mark.parametrize("build", [create_orepa, lambda *a, **kw: create_block("OREPA", *a, **kw)])
def test_factory_picks_the_class_by_kernel_size(build):
    assert type(build(4, 8, 1)) is OREPA_1x1
    assert type(build(4, 8, 1, 2)) is OREPA_1x1
    assert type(build(4, 8, k=7, s=2, large=True)) is OREPA_LargeConv
    assert type(build(4, 8, 5)) is OREPA
    assert type(build(4, 8)) is OREPA
    for name in ("OREPA", "OREPA_1x1", "OREPA_LargeConv", "OREPARepVGG"):
        assert get_block(name).__name__ == name


@pytest.mark.parametrize(
    ("args", "kwargs", "which"),
    [((4, 8, 1), {}, "OREPA_1x1"), ((4, 8, 5), {"large": True}, "OREPA_LargeConv")],
)
def test_orepa_constructor_points_to_the_right_class(args, kwargs, which):
    with pytest.raises(
        ValueError, match=rf"is an {which}: build {which}\(\.\.\.\) directly, or .*create_orepa"
    ):
        OREPA(*args, **kwargs)


def test_orepa_copies_and_pickles():
    block = OREPA(4, 4)
    assert type(copy.deepcopy(block)) is OREPA
    clone = pickle.loads(pickle.dumps(block))
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(clone.eval()(x), block.eval()(x))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: OREPA(4, 4, 4), "k=4 must be odd"),
        (lambda: OREPA(4, 4, 3, p=0), "padding p=0 must equal k//2=1"),
        (lambda: OREPA(4, 4, 3, d=2), "dilation d=2"),
        (lambda: OREPA(4, 6, 3, g=4), "c2=6 must be divisible by groups g=4"),
        (lambda: OREPA(3, 4, 3, g=2), "c1=3 must be divisible by groups g=2"),
        (lambda: create_orepa(4, 4, 3, large=True), "needs kernel size k >= 5"),
        (lambda: create_orepa(4, 4, 1, large=True), "large=True needs a kernel size k >= 5"),
        (lambda: create_orepa(4, 4, 1, large="yes"), "large must be True or False, got str 'yes'"),
        (lambda: create_orepa(4, 4, 1, d=2), "dilation d=2"),
        (lambda: create_orepa(4, 4, 5, g=2, large=True), "g=1 only"),
        (lambda: OREPA_1x1(4, 4, 3), "k=1"),
        (lambda: OREPARepVGG(4, 4, 1), "k >= 3"),
        (lambda: OREPARepVGG(4, 4, 3, d=2), "dilation d=2"),
        (lambda: OREPA(0, 4), "c1 must be a positive integer"),
    ],
)
def test_invalid_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
