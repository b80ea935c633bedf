"""OREPA's reference init options: ``init_hyper_para`` scales every branch's initial kernel (direct weights by
p, the depthwise and pointwise factors by sqrt(p) each), ``init_hyper_gamma`` the branch scales by
sqrt(gamma), as in the reference code; bad values are named."""

from __future__ import annotations

import math

import pytest
import torch

from reparam.blocks import OREPA
from reparam.blocks.orepa import INIT_HYPER_PARA, OREPAKernel


def _kernel(seed: int = 0, **kw) -> tuple[OREPAKernel, torch.Tensor]:
    torch.manual_seed(seed)
    gen = OREPAKernel(6, 8, 3, **kw).double()
    return gen, gen.generate().detach()


@pytest.mark.parametrize("p", [0.3, 0.55, 2.0])
def test_init_hyper_para_scales_the_parameters_as_the_reference_does(p: float) -> None:
    ref, k_ref = _kernel(init_hyper_para=1.0)
    got, k_got = _kernel(init_hyper_para=p)
    for name in ("weight_origin", "weight_avg", "weight_prior", "weight_1x1", "weight_1x1_kxk_conv2"):
        torch.testing.assert_close(getattr(got, name), p * getattr(ref, name), rtol=1e-6, atol=0)
    for name in ("weight_dw", "weight_pw"):
        torch.testing.assert_close(getattr(got, name), math.sqrt(p) * getattr(ref, name), rtol=1e-6, atol=0)
    torch.testing.assert_close(got.vector, ref.vector)
    err = (k_got - p * k_ref).abs().max() / (p * k_ref).abs().max()
    assert err <= 1e-6  # every branch's kernel times p (fp32 parameters: rounding only)


def test_init_hyper_gamma_scales_the_branch_scales_by_its_square_root() -> None:
    ref, k_ref = _kernel(init_hyper_para=1.0)
    got, k_got = _kernel(init_hyper_para=1.0, init_hyper_gamma=0.09)
    torch.testing.assert_close(got.vector, 0.3 * ref.vector, rtol=1e-7, atol=0)
    assert (k_got - 0.3 * k_ref).abs().max() <= 1e-6 * (0.3 * k_ref).abs().max()


def test_the_block_passes_the_options_and_uses_the_documented_default() -> None:
    torch.manual_seed(1)
    block = OREPA(6, 8, 3, init_hyper_para=0.3)
    torch.manual_seed(1)
    ref = OREPAKernel(6, 8, 3, init_hyper_para=0.3)
    torch.testing.assert_close(block.gen.weight_origin, ref.weight_origin)
    torch.manual_seed(1)
    default = OREPA(6, 8, 3)
    torch.manual_seed(1)
    explicit = OREPA(6, 8, 3, init_hyper_para=INIT_HYPER_PARA)
    torch.testing.assert_close(default.gen.generate(), explicit.gen.generate())


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_bad_init_options_are_named(value) -> None:
    with pytest.raises(ValueError, match="init_hyper_para must be a finite number > 0"):
        OREPAKernel(4, 4, 3, init_hyper_para=value)
    with pytest.raises(ValueError, match="init_hyper_gamma must be a finite number > 0"):
        OREPA(4, 4, 3, init_hyper_gamma=value)
