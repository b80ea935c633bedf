"""DynamicConv family: every algorithm equals the per-sample reference, exact parameter counts, BN fold,
MuSGD grouping, ONNX export with dynamic batch and image size, FLOP counts, argument validation."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from reparam.bench.dynamic import dynamic_conv_macs, dynamic_layer_macs
from reparam.blocks.conv import ConvBNAct
from reparam.blocks.dynamic import (
    Bottleneck_DynamicConv,
    C2f_DynamicConv,
    DynamicConv,
    DynamicConvBNAct,
    dynamic_conv2d,
)
from reparam.blocks.registry import registered_blocks
from reparam.convert import randomize_bn_, reparameterize
from reparam.verification import verify

FP32_RTOL, FP64_RTOL = 1e-5, 1e-12


def reference(m: DynamicConv, x: Tensor) -> Tensor:
    """The defining formula, one sample at a time: conv(x_b, sum_e alpha_be W_e) + sum_e alpha_be b_e."""
    bank = m.weight.view(m.num_experts, m.c2, m.c1 // m.g, m.k, m.k)
    outs = []
    for xb in x:
        pooled = F.adaptive_avg_pool2d(xb[None], 1).flatten(1)
        alpha = torch.sigmoid(F.linear(pooled, m.routing_weight, m.routing_bias))[0]
        kernel = sum(alpha[e] * bank[e] for e in range(m.num_experts))
        bias = sum(alpha[e] * m.bias[e, :, 0] for e in range(m.num_experts)) if m.bias is not None else None
        if m.static_bias is not None:
            bias = m.static_bias if bias is None else bias + m.static_bias
        outs.append(F.conv2d(xb[None], kernel, bias, m.s, m.p, m.d, m.g))
    return torch.cat(outs)


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def expected_params(c1: int, c2: int, k: int, g: int, e: int, bias: bool) -> int:
    return e * c2 * (c1 // g) * k * k + e * (c1 + 1) + (e * c2 if bias else 0)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


geometry = st.fixed_dictionaries(
    {
        "g": st.sampled_from([1, 2, 3]),
        "ig": st.integers(1, 3),
        "og": st.integers(1, 3),
        "k": st.sampled_from([1, 3, 5]),
        "s": st.integers(1, 2),
        "d": st.integers(1, 2),
        "e": st.integers(1, 5),
        "bias": st.booleans(),
        "batch": st.sampled_from([1, 2, 3, 9]),
        "h": st.integers(5, 9),
        "w": st.integers(5, 9),
        "fp64": st.booleans(),
    }
)


@settings(max_examples=20, deadline=None)
@given(geo=geometry, seed=st.integers(0, 2**16))
def test_every_algorithm_equals_reference(geo: dict, seed: int) -> None:
    torch.manual_seed(seed)
    g, k = geo["g"], geo["k"]
    dtype = torch.float64 if geo["fp64"] else torch.float32
    m = DynamicConv(g * geo["ig"], g * geo["og"], k, geo["s"], None, g, geo["d"], geo["bias"], geo["e"])
    m = m.to(dtype).eval()
    x = torch.randn(geo["batch"], m.c1, geo["h"], geo["w"], dtype=dtype)
    with torch.no_grad():
        ref = reference(m, x)
        for algorithm in ("auto", "grouped", "unfold"):
            m.algorithm = algorithm
            out = m(x)
            assert out.shape == ref.shape
            assert rel_err(out, ref) <= (FP64_RTOL if geo["fp64"] else FP32_RTOL), algorithm


@pytest.mark.parametrize(("algorithm", "k"), [("grouped", 3), ("unfold", 3), ("unfold", 1)])
def test_gradients_equal_reference(algorithm: str, k: int) -> None:
    torch.manual_seed(0)
    m = DynamicConv(4, 6, k, 2, g=2, bias=True).double()
    m.algorithm = algorithm
    x = torch.randn(10, 4, 9, 8, dtype=torch.float64)
    target = torch.randn_like(reference(m, x))
    grads = []
    for fn in (m, lambda t: reference(m, t)):
        m.zero_grad()
        (fn(x) * target).sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for got, want in zip(*grads, strict=True):
        assert rel_err(got, want) <= FP64_RTOL


def test_functional_matches_module_and_rejects_bad_algorithm() -> None:
    torch.manual_seed(0)
    m = DynamicConv(4, 6, 3, 2, g=2, bias=True).eval()
    x = torch.randn(3, 4, 9, 9)
    gates = m.gates(x)
    y = dynamic_conv2d(x, gates, m.kernel_bank(), m.sample_bias(gates), 2, 1, 1, 2, "grouped")
    torch.testing.assert_close(y, m(x))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        dynamic_conv2d(x, gates, m.kernel_bank(), None, algorithm="fast")


@pytest.mark.parametrize(
    ("c1", "c2", "k", "g", "e", "bias"),
    [(16, 32, 3, 1, 4, False), (32, 64, 3, 2, 4, True), (8, 8, 1, 8, 2, False), (12, 24, 5, 3, 6, True)],
)
def test_parameter_count_exact(c1: int, c2: int, k: int, g: int, e: int, bias: bool) -> None:
    m = DynamicConv(c1, c2, k, g=g, bias=bias, num_experts=e)
    assert n_params(m) == expected_params(c1, c2, k, g, e, bias)
    wrapped = DynamicConvBNAct(c1, c2, k, g=g, num_experts=e)
    assert n_params(wrapped) == expected_params(c1, c2, k, g, e, False) + 2 * c2


def test_matches_timm_condconv_reference_layer() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    c1, c2, k, s, g, e = 6, 8, 3, 2, 2, 4
    router = nn.Linear(c1, e)
    cond = timm_layers.CondConv2d(c1, c2, k, s, padding=k // 2, groups=g, bias=True, num_experts=e)
    m = DynamicConv(c1, c2, k, s, g=g, bias=True, num_experts=e)
    assert n_params(m) == n_params(router) + n_params(cond)
    state = {f"routing.{n}": t for n, t in router.state_dict().items()}
    state |= {f"cond_conv.{n}": t for n, t in cond.state_dict().items()}
    m.load_reference_state_dict(state)
    x = torch.randn(5, c1, 12, 10)
    with torch.no_grad():
        ref = cond(x, torch.sigmoid(router(F.adaptive_avg_pool2d(x, 1).flatten(1))))
        assert rel_err(m(x), ref) <= FP32_RTOL
    with pytest.raises(ValueError, match="state keys must be"):
        m.load_reference_state_dict({"routing.weight": router.weight})


def test_musgd_does_not_mix_experts() -> None:
    """Ultralytics' optimizer builder keeps the 3-D expert banks out of Muon, so one expert's MuSGD update
    does not depend on the other experts' gradients (Muon on timm's 2-D (E, P) bank couples them)."""
    trainer = pytest.importorskip("ultralytics.engine.trainer")

    def step(other_scale: float) -> tuple[DynamicConv, set[int]]:
        torch.manual_seed(0)
        layer = DynamicConv(4, 8, 3, bias=True)
        model = nn.Module()
        model.model = nn.Sequential(layer)
        fake = types.SimpleNamespace(args=types.SimpleNamespace(), data={})
        opt = trainer.BaseTrainer.build_optimizer(fake, model, "MuSGD", 0.01, 0.9, 0.0, 1e5)
        for p in layer.parameters():
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(1))
        layer.weight.grad[1:] *= other_scale
        opt.step()
        return layer, {id(p) for grp in opt.param_groups if grp["use_muon"] for p in grp["params"]}

    a, muon = step(1.0)
    b, _ = step(3.0)
    assert a.weight.ndim == 3 and a.bias.ndim == 3
    assert id(a.weight) not in muon and id(a.bias) not in muon
    assert id(a.routing_weight) in muon  # the router is a genuine (E, c1) matrix
    torch.testing.assert_close(a.weight[0], b.weight[0], rtol=0, atol=0)
    assert not torch.equal(a.weight[1], b.weight[1])


@settings(max_examples=10, deadline=None)
@given(
    g=st.sampled_from([1, 2]),
    k=st.sampled_from([1, 3]),
    s=st.integers(1, 2),
    batch=st.sampled_from([1, 3]),
    fp64=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_bn_fold_is_exact(g: int, k: int, s: int, batch: int, fp64: bool, seed: int) -> None:
    torch.manual_seed(seed)
    m = DynamicConvBNAct(2 * g, 4 * g, k, s, g=g).eval()
    dtype, rtol = (torch.float64, 1e-10) if fp64 else (torch.float32, FP32_RTOL)
    report = verify(m, input_shape=(batch, 2 * g, 9, 8), dtype=dtype, randomize_bn=True, rtol=rtol, seed=seed)
    assert report.ok, str(report)
    assert [b.kind for b in report.blocks] == ["DynamicConvBNAct"]


def test_bn_fold_idempotent_and_state_dict() -> None:
    torch.manual_seed(0)
    m = DynamicConvBNAct(4, 6, 3, 2, g=2).eval()
    randomize_bn_(m, seed=1)
    x = torch.randn(3, 4, 10, 10)
    with torch.no_grad():
        ref = m(x)
        m.reparameterize()
        once = {n: t.clone() for n, t in m.state_dict().items()}
        m.reparameterize()
        assert m.deployed
        assert rel_err(m(x), ref) <= FP32_RTOL
        assert rel_err(F.silu(reference(m.conv, x)), ref) <= FP32_RTOL
    assert set(once) == {"conv.routing_weight", "conv.routing_bias", "conv.weight", "conv.static_bias"}
    for n, t in m.state_dict().items():
        torch.testing.assert_close(t, once[n], rtol=0, atol=0)


def test_bottleneck_and_c2f_structure() -> None:
    """Same layout and argument order as Ultralytics C2f/Bottleneck; cv2 of each bottleneck is dynamic."""
    blocks = pytest.importorskip("ultralytics.nn.modules.block")
    c1, c2, n, g, e = 8, 16, 2, 2, 4
    ours = C2f_DynamicConv(c1, c2, n, True, g)
    theirs = blocks.C2f(c1, c2, n, True, g)
    c = ours.c
    assert c == theirs.c
    static_cv2 = c * (c // g) * 9
    assert n_params(ours) == n_params(theirs) + n * (expected_params(c, c, 3, g, e, False) - static_cv2)
    assert isinstance(ours.cv1, ConvBNAct) and len(ours.m) == n
    bott = ours.m[0]
    assert isinstance(bott, Bottleneck_DynamicConv) and bott.add
    assert bott.cv2.conv.g == g and bott.cv2.conv.k == 3 and bott.cv1.conv.groups == 1
    assert not Bottleneck_DynamicConv(8, 16, shortcut=True).add
    x = torch.randn(2, c1, 12, 12)
    assert ours.eval()(x).shape == theirs.eval()(x).shape
    specs = registered_blocks()
    assert specs["C2f_DynamicConv"].signature == "repeat"
    for name in ("DynamicConv", "DynamicConvBNAct", "Bottleneck_DynamicConv"):
        assert specs[name].signature == "conv"


def test_c2f_whole_model_conversion_is_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ConvBNAct(3, 8, 3, 2), C2f_DynamicConv(8, 8, 2, True, 2)).eval()
    for dtype, rtol in ((torch.float32, FP32_RTOL), (torch.float64, 1e-10)):
        report = verify(model, input_shape=(2, 3, 16, 16), dtype=dtype, randomize_bn=True, rtol=rtol)
        assert report.ok, str(report)
    deployed = reparameterize(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())


def test_onnx_export_dynamic_batch_and_image_size(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = nn.Sequential(DynamicConvBNAct(4, 8, 3, 2, g=2), DynamicConv(8, 6, 1, bias=True)).eval()
    randomize_bn_(model, seed=0)
    path = tmp_path / "dynamic.onnx"
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        model,
        (torch.randn(2, 4, 16, 16),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": axes, "y": axes},
        opset_version=17,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, h, w in ((1, 16, 16), (3, 16, 16), (1, 24, 20), (3, 24, 20)):
        x = torch.randn(batch, 4, h, w)
        got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        with torch.no_grad():
            ref = model(x)
        assert got.shape == ref.shape
        assert rel_err(got, ref) <= FP32_RTOL


def test_jit_trace_keeps_batch_dynamic() -> None:
    torch.manual_seed(0)
    m = DynamicConv(4, 6, 3, 2, g=2).eval()
    with torch.no_grad():
        traced = torch.jit.trace(m, torch.randn(2, 4, 10, 10))
        x = torch.randn(5, 4, 14, 12)
        assert rel_err(traced(x), m(x)) <= FP32_RTOL


def test_torch_export_keeps_batch_and_size_dynamic() -> None:
    torch.manual_seed(0)
    m = DynamicConvBNAct(4, 8, 3, 2, g=2).eval()
    randomize_bn_(m, seed=0)
    dims = {0: torch.export.Dim("b", min=1, max=64), 2: torch.export.Dim("h", min=8, max=256)}
    dims[3] = torch.export.Dim("w", min=8, max=256)
    program = torch.export.export(m, (torch.randn(2, 4, 16, 16),), dynamic_shapes={"x": dims})
    x = torch.randn(5, 4, 20, 18)
    with torch.no_grad():
        assert rel_err(program.module()(x), m(x)) <= FP32_RTOL


def test_macs_formula() -> None:
    m = DynamicConv(16, 32, 3, 2, g=2, bias=True, num_experts=4)
    macs = dynamic_conv_macs(m, (2, 16, 20, 18))
    ho, wo = 10, 9
    assert macs.pool == 2 * 16 * 20 * 18
    assert macs.router == 2 * 4 * 16
    assert macs.aggregate == 2 * 4 * 32 * 8 * 9 + 2 * 4 * 32
    assert macs.conv == 2 * 32 * 8 * 9 * ho * wo
    assert macs.total == macs.pool + macs.router + macs.aggregate + macs.conv
    with pytest.raises(ValueError, match="expects c1=16"):
        dynamic_conv_macs(m, (1, 8, 20, 18))


def test_thop_and_ultralytics_gflops_count_every_dynamic_conv_in_full() -> None:
    thop = pytest.importorskip("thop")
    torch_utils = pytest.importorskip("ultralytics.utils.torch_utils")
    from reparam.yolo.flops import patch_thop

    patch_thop()
    torch.manual_seed(0)
    layers = [DynamicConv(3, 8, 3, 2), DynamicConv(8, 16, 3, 2, g=2, bias=True), DynamicConv(16, 8)]
    model = nn.Sequential(*layers)
    x = torch.zeros(1, 3, 32, 32)
    counted, _ = thop.profile(model, inputs=(x,), verbose=False)
    layers = dynamic_layer_macs(model, x)
    assert list(layers) == ["0", "1", "2"]
    assert counted == sum(m.total for m in layers.values())  # pooling, router, aggregation and conv
    full = 2 * sum(m.total for m in dynamic_layer_macs(model, torch.zeros(1, 3, 640, 640)).values()) / 1e9
    assert torch_utils.get_flops(model, 640) == pytest.approx(full, rel=1e-9)  # as Ultralytics prints


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"c1": 4, "c2": 8, "num_experts": 0}, "num_experts must be a positive integer"),
        ({"c1": 6, "c2": 8, "g": 4}, "c1=6 must be divisible by groups g=4"),
        ({"c1": 8, "c2": 6, "g": 4}, "c2=6 must be divisible by groups g=4"),
        ({"c1": 4, "c2": 8, "k": 2}, "k=2 must be odd for automatic 'same' padding"),
        ({"c1": 4, "c2": 8, "k": 3, "p": -1}, "padding p must be a non-negative integer"),
        ({"c1": 0, "c2": 8}, "c1 must be a positive integer"),
        ({"c1": 4, "c2": 8, "bias": 1}, "bias must be True or False"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DynamicConv(**kwargs)


def test_invalid_block_arguments() -> None:
    assert DynamicConv(4, 8, 2, p=0).p == 0  # an even kernel is fine with explicit padding
    with pytest.raises(ValueError, match="num_experts must be a positive integer"):
        DynamicConvBNAct(4, 8, 3, num_experts=0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        C2f_DynamicConv(8, 8, 0)
    with pytest.raises(ValueError, match="expansion e must be a positive number, got int 0"):
        C2f_DynamicConv(8, 8, 1, e=0)
    with pytest.raises(ValueError, match="shortcut must be True or False, got str 'yes'"):
        C2f_DynamicConv(8, 8, 1, "yes")
    with pytest.raises(ValueError, match="g must be a positive integer, got str 'x'"):
        Bottleneck_DynamicConv(8, 8, True, "x")
    with pytest.raises(ValueError, match="expansion e must be a positive number, got bool True"):
        Bottleneck_DynamicConv(8, 8, True, 1, (3, 3), True)
    with pytest.raises(ValueError, match="must be divisible by groups g=3"):
        C2f_DynamicConv(8, 8, 1, g=3)
