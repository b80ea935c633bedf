"""OREPA's fast kernel generator against an autograd reference; the training-cost benchmark's smoke run."""

import pytest
import torch

from reparam.bench.train_cost import NETWORKS, build_network, run_train_cost
from reparam.blocks.orepa import EXPAND, OREPAKernel, frequency_prior


def _reference_kernel(gen: OREPAKernel) -> torch.Tensor:
    """The six branches summed with plain autograd ops, one group at a time (the paper's formula)."""
    o, k, g, t = gen.c2, gen.k, gen.g, gen.t
    ig, og, tg = gen.c1 // g, o // g, t // g
    v = gen.vector
    ident = (torch.arange(t)[:, None] % ig == torch.arange(ig)[None, :]).to(v)  # (T, I/g)
    c1 = gen.weight_1x1_kxk_idconv1.view(t, ig) + ident
    centre = torch.zeros(k, k, dtype=v.dtype)
    centre[k // 2, k // 2] = 1
    # The module's fixed filters are built in fp32 (then cast with the module), so the reference is too.
    prior = frequency_prior(o, k).to(v.dtype)
    mean = torch.tensor(1.0 / k**2, dtype=torch.float32).to(v.dtype)
    per_group = []
    for j in range(g):
        os_, ts = slice(j * og, (j + 1) * og), slice(j * tg, (j + 1) * tg)
        k3 = torch.einsum("otyx,ti->oiyx", gen.weight_1x1_kxk_conv2[os_], c1[ts])
        dw = gen.weight_dw.view(gen.c1, EXPAND, k, k)[j * ig : (j + 1) * ig]
        k5 = torch.einsum("oie,ieyx->oiyx", gen.weight_pw[os_].view(og, ig, EXPAND), dw)
        per_group.append(k3 * v[3, os_, None, None, None] + k5 * v[-1, os_, None, None, None])
    kernel = torch.cat(per_group) + gen.weight_origin * v[0, :, None, None, None]
    kernel = kernel + gen.weight_avg * v[1, :, None, None, None] * mean
    kernel = kernel + gen.weight_prior * prior[:, None] * v[2, :, None, None, None]
    if gen.weight_1x1 is not None:
        kernel = kernel + gen.weight_1x1 * centre * v[4, :, None, None, None]
    return kernel


@pytest.mark.parametrize(
    ("c1", "c2", "k", "g", "branch_1x1"),
    [(4, 6, 3, 1, True), (4, 8, 5, 2, True), (6, 6, 3, 6, True), (4, 4, 3, 1, False), (8, 8, 3, 8, False)],
)
def test_kernel_and_gradients_equal_the_autograd_reference(c1, c2, k, g, branch_1x1):
    torch.manual_seed(0)
    gen = OREPAKernel(c1, c2, k, g, branch_1x1=branch_1x1).double()
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # off the initial values (zero deltas, round scales)
    upstream = torch.randn(c2, c1 // g, k, k, dtype=torch.float64)
    fast = gen()
    fast_grads = torch.autograd.grad((fast * upstream).sum(), list(gen.parameters()))
    ref = _reference_kernel(gen)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), list(gen.parameters()))
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for (name, _), a, b in zip(gen.named_parameters(), fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_conv8_network_has_eight_3x3_block_layers():
    net = build_network("conv8@112", "OREPA")
    assert sum(type(m).__name__ == "OREPA" for m in net.modules()) == 8
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert NETWORKS["conv8@112"] == (112, 16)


def test_train_cost_smoke_run_reports_ratios_at_the_requested_size():
    rows = run_train_cost(
        networks=["conv8@112"],
        blocks=("plain", "OREPA"),
        rounds=2,
        warmup=0,
        memory_steps=1,
        batch=2,
        imgsz=32,
    )
    assert [(r["block"], r["imgsz"], r["batch"]) for r in rows] == [("plain", 32, 2), ("OREPA", 32, 2)]
    assert rows[0]["time_x_plain"] == 1.0
    assert rows[1]["time_x_plain"] > 0 and rows[1]["params_M"] > rows[0]["params_M"]


@pytest.mark.parametrize(("key", "value"), [("batch", 0), ("imgsz", True), ("batch", 2.0)])
def test_train_cost_rejects_bad_sizes(key, value):
    with pytest.raises(ValueError, match=key):
        run_train_cost(networks=["conv8@112"], blocks=("plain",), **{key: value})


@pytest.mark.parametrize(("c1", "g"), [(2, 2), (4, 4), (8, 1)])
def test_generation_never_writes_into_a_parameter(c1, g):
    """Width-1 groups make transposes contiguous views; the generator must still copy, not scale in place."""
    torch.manual_seed(0)
    gen = OREPAKernel(c1, c1, 3, g).double()
    before = {n: p.detach().clone() for n, p in gen.named_parameters()}
    kernel = gen()
    torch.autograd.grad((kernel * torch.randn_like(kernel)).sum(), list(gen.parameters()))
    for name, p in gen.named_parameters():
        assert torch.equal(p, before[name]), name
    torch.testing.assert_close(gen(), _reference_kernel(gen), rtol=1e-12, atol=1e-12)
