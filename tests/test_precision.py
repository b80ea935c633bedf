"""Mixed precision: every block trains and evaluates under CPU autocast (fp16 and bf16) with gradients
close to fp32, converts under autocast, and runs and converts as a ``.half()`` / ``.bfloat16()`` model.

Tolerances are multiples of the unit roundoff u (bf16 2^-8, fp16 2^-11), errors are relative to the
largest reference magnitude (outputs) or norm-wise per parameter (gradients):
- eval outputs, 16 u (bf16 0.0625, fp16 0.0078): a block chains at most 7 convs, each rounding its input
  and kernel once, so at most about 14 u; measured at most 0.012 (bf16) and 0.0016 (fp16).
- training outputs and gradients, 32 u (bf16 0.125, fp16 0.0156): backward rounds every output gradient
  too, and train-mode BN divides by per-channel batch std, which amplifies rounding in low-variance
  (post-ReLU) channels of deep chains; measured at most 0.032 (bf16) and 0.0077 (fp16).
- gradients are compared as ``|g - g32| / max(|g32|, 1% |G32|)`` (G: all of the block's gradients): a
  BN bias before a train-mode BN has a zero gradient in exact arithmetic, so only the floor is meaningful.
- max-pool blocks (SimSPPF, SimCSPSPPF), gradients: rounding makes two values of a 5x5 window equal and
  the max's gradient goes to the other pixel, equally right within rounding; measured 0.17 (bf16) and
  0.019 (fp16) where the same blocks with average pooling give 0.014 and 0.0013; bound 0.35 and 0.05.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from conftest import rel_err
from reparam.blocks import (
    DBB,
    OREPA,
    BepC3,
    BiC,
    C2f_DynamicConv,
    ConvBNAct,
    DynamicConv,
    DynamicConvBNAct,
    OREPA_1x1,
    OREPA_LargeConv,
    OREPARepVGG,
    QARepVGGBlock,
    ReparamBlock,
    RepBlock,
    RepVGGBlock,
    SimCSPSPPF,
    SimSPPF,
)
from reparam.blocks.orepa import OREPAKernel
from reparam.convert import reparameterize

C = 8
LOW = [torch.bfloat16, torch.float16]
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
EVAL = {dt: 16 * u for dt, u in UNIT_ROUNDOFF.items()}
TRAIN = {dt: 32 * u for dt, u in UNIT_ROUNDOFF.items()}
MAXPOOL_GRAD = {torch.bfloat16: 0.35, torch.float16: 0.05}
MAXPOOL_BLOCKS = {"SimSPPF", "SimCSPSPPF"}
GRAD_FLOOR = 1e-2

BLOCKS: dict[str, Callable[[], nn.Module]] = {
    "RepVGGBlock": lambda: RepVGGBlock(C, C),
    "QARepVGGBlock": lambda: QARepVGGBlock(C, C),
    "QARepVGGBlock_avg": lambda: QARepVGGBlock(C, C, avg=True),
    "DBB": lambda: DBB(C, C),
    "OREPA": lambda: OREPA(C, C, 3),
    "OREPA_1x1": lambda: OREPA_1x1(C, C),
    "OREPA_LargeConv": lambda: OREPA_LargeConv(C, C, 5),
    "OREPARepVGG": lambda: OREPARepVGG(C, C),
    "ConvBNAct": lambda: ConvBNAct(C, C, 3),
    "DynamicConv": lambda: DynamicConv(C, C, 3),
    "DynamicConvBNAct": lambda: DynamicConvBNAct(C, C, 3),
    "DynamicConvBNAct_1x1": lambda: DynamicConvBNAct(C, C, 1),  # 'auto' runs the unfold algorithm
    "C2f_DynamicConv": lambda: C2f_DynamicConv(C, C, 1),
    "RepBlock": lambda: RepBlock(C, C, 2),
    "BepC3": lambda: BepC3(C, C, 2),
    "BiC": lambda: BiC([C, C, C], C),
    "SimSPPF": lambda: SimSPPF(C, C),
    "SimCSPSPPF": lambda: SimCSPSPPF(C, C),
}


def make_block(name: str, seed: int = 0) -> nn.Module:
    """The block with seeded weights and BN statistics moved off their defaults."""
    torch.manual_seed(seed)
    block = BLOCKS[name]()
    with torch.no_grad():
        for mod in block.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
        for pname, p in block.named_parameters():
            if "vector" in pname or "idconv1" in pname or "l2i" in pname:
                p.add_(torch.randn_like(p) * 0.3)
    return block


def make_input(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Tensor | list[Tensor]:
    """Batch 2, 8x8 (BiC: its three inputs at 4x4, 8x8 and 16x16)."""
    gen = torch.Generator().manual_seed(1)
    sizes = [4, 8, 16] if name == "BiC" else [8]
    xs = [torch.randn(2, C, s, s, generator=gen).to(device=device, dtype=dtype) for s in sizes]
    return xs if name == "BiC" else xs[0]


def grad_errors(got: dict[str, Tensor], ref: dict[str, Tensor]) -> dict[str, float]:
    """Per parameter ``|got - ref| / max(|ref|, GRAD_FLOOR * |all of ref|)``."""
    total = float(torch.cat([g.double().flatten() for g in ref.values()]).norm())
    assert total > 0, "the block has no gradient at all: the comparison would be vacuous"
    return {
        k: float((got[k].double() - r.double()).norm()) / max(float(r.double().norm()), GRAD_FLOOR * total)
        for k, r in ref.items()
    }


def loss(y: Tensor) -> Tensor:
    """A fp32 loss with a fixed random weighting (a plain sum would give BN'd outputs zero gradient)."""
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(y.device)
    return (y.float() * weight).sum()


def grads_of(
    block: nn.Module, x: Tensor | list[Tensor], autocast: torch.dtype | None, device: str = "cpu"
) -> tuple[dict[str, Tensor], Tensor]:
    """One training step on a copy of ``block``: parameter gradients and the output (fp32 loss)."""
    m = copy.deepcopy(block).train()
    with torch.autocast(device, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        y = m(x)
    loss(y).backward()
    grads = {}
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.dtype == p.dtype, f"{pname}: gradient {p.grad.dtype} for a {p.dtype} parameter"
        grads[pname] = p.grad
    return grads, y


@functools.cache
def fp32_training_step(name: str) -> tuple[dict[str, Tensor], Tensor]:
    """The fp32 reference step of a block (shared by its bf16 and fp16 cases)."""
    return grads_of(make_block(name), make_input(name), None)


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_autocast_train_grads_close_to_fp32(name: str, dtype: torch.dtype) -> None:
    ref, y32 = fp32_training_step(name)
    got, y = grads_of(make_block(name), make_input(name), dtype)
    assert not torch.equal(y, y32), "autocast changed nothing: the convs did not run in low precision"
    assert rel_err(y.detach(), y32.detach()) <= TRAIN[dtype]
    bound = MAXPOOL_GRAD[dtype] if name in MAXPOOL_BLOCKS else TRAIN[dtype]
    for pname, err in grad_errors(got, ref).items():
        assert err <= bound, f"{pname}: gradient error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_autocast_eval_and_converted(name: str, dtype: torch.dtype) -> None:
    block = make_block(name).eval()
    x = make_input(name)
    with torch.no_grad():
        y32 = block(x)
        with torch.autocast("cpu", dtype=dtype):
            y = block(x)
            deployed = reparameterize(block)  # conversion inside autocast still folds in fp32
            y_dep = deployed(x)
    assert not torch.equal(y, y32), "autocast changed nothing: the convs did not run in low precision"
    assert rel_err(y, y32) <= EVAL[dtype]
    assert rel_err(y_dep, y) <= EVAL[dtype]
    with torch.no_grad():
        y_dep32 = deployed(x)
    assert rel_err(y_dep32, y32) <= 1e-5, "conversion under autocast lost fp32 precision"


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_low_precision_model_trains_and_converts(name: str, dtype: torch.dtype) -> None:
    """A ``.to(dtype)`` model: training step, eval, and conversion close to the fp32 model."""
    block = make_block(name)
    x32 = make_input(name)
    x = make_input(name, dtype)
    low = copy.deepcopy(block).to(dtype).train()
    low(x).float().sum().backward()
    for pname, p in low.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype, pname
        assert bool(torch.isfinite(p.grad).all()), pname
    block.eval()
    low = copy.deepcopy(block).to(dtype).eval()
    with torch.no_grad():
        y32 = block(x32)
        y = low(x)
        deployed = reparameterize(low)
        y_dep = deployed(x)
    assert y.dtype == dtype and y_dep.dtype == dtype
    assert all(p.dtype == dtype for p in deployed.parameters())
    assert rel_err(y, y32) <= EVAL[dtype]
    assert rel_err(y_dep, y32) <= EVAL[dtype]


REPARAM_BLOCKS = [n for n in BLOCKS if isinstance(BLOCKS[n](), ReparamBlock)]


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", REPARAM_BLOCKS)
def test_deploy_kernel_is_folded_wide_then_rounded_once(name: str, dtype: torch.dtype) -> None:
    """The deploy conv of a low-precision block equals the fp64 fold of its own weights, rounded once."""
    low = make_block(name).to(dtype).eval()
    ref_w, ref_b = copy.deepcopy(low).double().equivalent_kernel_bias()
    low.reparameterize()
    assert low.conv.weight.dtype == dtype
    for got, ref in ((low.conv.weight, ref_w), (low.conv.bias, ref_b)):
        # One rounding to dtype: within half an ulp (u |ref|), plus the fp32 fold's own rounding.
        slack = UNIT_ROUNDOFF[dtype] * ref.abs() + 1e-6 * ref.abs().max()
        assert bool(((got.double() - ref).abs() <= slack).all())


@pytest.mark.parametrize("factory", [lambda: OREPA(C, C, 3), lambda: OREPARepVGG(C, C)], ids=["k3", "repvgg"])
def test_orepa_generator_dtypes(factory: Callable[[], nn.Module]) -> None:
    """The generator computes in fp32 and hands the conv its compute dtype; fp64 stays fp64."""
    gen: OREPAKernel = factory().gen
    assert gen().dtype == torch.float32 and gen.generate().dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gen().dtype == torch.bfloat16
        assert gen.generate().dtype == torch.float32
    half = copy.deepcopy(gen).half()
    assert half().dtype == torch.float16 and half.generate().dtype == torch.float32
    half().float().sum().backward()
    assert all(p.grad.dtype == torch.float16 for p in half.parameters())
    assert copy.deepcopy(gen).double()().dtype == torch.float64


def test_backward_inside_autocast_region() -> None:
    """backward() called inside the autocast region (not the recommended pattern) still works."""
    block = make_block("OREPA")
    x = make_input("OREPA")
    ref, _ = grads_of(block, x, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss(block(x)).backward()
    errors = grad_errors({n: p.grad for n, p in block.named_parameters()}, ref)
    assert max(errors.values()) <= TRAIN[torch.bfloat16], errors


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["DynamicConvBNAct", "DynamicConvBNAct_1x1"])
def test_dynamic_algorithms_agree_under_autocast(name: str, dtype: torch.dtype) -> None:
    """Both DynamicConv algorithms give the autocast dtype and the same values, folded BN bias included."""
    block = reparameterize(make_block(name).eval())
    x = make_input("DynamicConvBNAct")
    outs = {}
    with torch.no_grad():
        y32 = block(x)
        for algorithm in ("grouped", "unfold"):
            block.conv.algorithm = algorithm
            with torch.autocast("cpu", dtype=dtype):
                outs[algorithm] = block(x)
    assert block.conv.static_bias is not None
    assert outs["grouped"].dtype == outs["unfold"].dtype == dtype
    assert rel_err(outs["unfold"], outs["grouped"]) <= EVAL[dtype]
    assert rel_err(outs["grouped"], y32) <= EVAL[dtype]


def test_deploy_overflow_in_fp16_is_named() -> None:
    """A fold that is finite in fp32 but overflows fp16 raises instead of writing inf into the conv."""
    block = RepVGGBlock(C, C).half().eval()
    with torch.no_grad():
        block.rbr_dense.bn.running_var.fill_(1e-4)
        block.rbr_dense.bn.weight.fill_(1e3)
        block.rbr_dense.conv.weight.fill_(10.0)
    with pytest.raises(ValueError, match=r"RepVGGBlock: the folded kernel .* overflows torch.float16"):
        block.reparameterize()
    assert not block.deployed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast needs a CUDA device; none here")
@pytest.mark.parametrize("name", ["OREPA", "OREPA_1x1", "OREPA_LargeConv", "OREPARepVGG", "DynamicConvBNAct"])
def test_cuda_fp16_autocast_grads(name: str) -> None:
    block = make_block(name).cuda()
    x = make_input(name, device="cuda")
    ref, y32 = grads_of(block, x, None, "cuda")
    got, y = grads_of(block, x, torch.float16, "cuda")
    assert not torch.equal(y, y32)
    errors = grad_errors(got, ref)
    assert max(errors.values()) <= TRAIN[torch.float16], errors
