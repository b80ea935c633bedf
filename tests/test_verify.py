"""verify never passes silently (NaN/Inf anywhere, nothing converted), dtype tolerances, relative_error."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reparam
from reparam import RepVGGBlock
from reparam.blocks import ReparamBlock
from reparam.convert import randomize_bn_
from reparam.verification import relative_error


class TwoHeads(nn.Module):
    """A RepVGG body with two outputs; the second holds a NaN in both forms."""

    def __init__(self) -> None:
        super().__init__()
        self.body = RepVGGBlock(3, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.body(x)
        second = y.clone()
        second[0, 0, 0, 0] = math.nan
        return y, second


def test_nan_in_the_second_output_fails_and_says_where():
    report = reparam.verify(TwoHeads().eval(), input_shape=(1, 3, 8, 8), randomize_bn=True)
    assert not report.ok and math.isinf(report.max_rel) and math.isinf(report.max_abs)
    assert (
        "output[1] holds NaN in the training form (reference) and NaN in the deploy form (converted)"
        in report.hints
    )
    assert any("the training form itself is not finite" in h for h in report.hints)
    assert str(report).startswith("verify: FAIL — 1 blocks converted, 0 BN folds, max_abs=inf")


class InfBias(ReparamBlock):
    """A 1x1 block whose deploy bias is +inf: only the converted form breaks."""

    def __init__(self) -> None:
        super().__init__(3, 3, 1, 1, 0, 1, 1, nn.Identity())
        self.a = nn.Conv2d(3, 3, 1, bias=False)

    def forward_train(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a.weight, torch.full((3,), math.inf)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = InfBias()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"plain": x, "boxes": self.block(x)}


def test_inf_in_the_converted_form_only_fails():
    report = reparam.verify(DictOut().eval(), input_shape=(1, 3, 5, 5))
    assert not report.ok
    assert "output['boxes'] holds Inf in the deploy form (converted)" in report.hints
    assert "the training form is finite: the conversion produced the NaN/Inf" in report.hints
    assert report.worst_block.name == "block" and math.isinf(report.worst_block.max_rel)


class TwoBranch(nn.Module):
    """A user's multi-branch block that nobody taught to convert."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, 1, 1)
        self.b = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def test_nothing_converted_fails_and_names_the_suspects():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(TwoBranch(), nn.ReLU()), TwoBranch()).eval()
    report = reparam.verify(model, input_shape=(1, 3, 8, 8))
    assert not report.ok and report.max_rel == 0.0
    assert (report.blocks_converted, report.bn_folds, report.blocks) == (0, 0, [])
    assert report.hints[0] == (
        "nothing was converted: the model has no re-parameterizable block and no Conv->BN pair; "
        "modules that look re-parameterizable (two or more parallel conv branches) but lack "
        "reparameterize(): "
        "1.0 (TwoBranch), 2 (TwoBranch)"
    )
    assert str(report).startswith("verify: FAIL — 0 blocks converted, 0 BN folds,")


def test_nothing_converted_in_a_plain_model_or_an_already_deployed_one():
    plain = reparam.verify(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()).eval(), input_shape=(1, 3, 4, 4))
    assert not plain.ok
    assert plain.hints == [
        "nothing was converted: the model has no re-parameterizable block and no Conv->BN pair"
    ]
    deployed = reparam.reparameterize(nn.Sequential(RepVGGBlock(3, 3), RepVGGBlock(3, 3)).eval())
    report = reparam.verify(deployed, input_shape=(1, 3, 4, 4))
    assert not report.ok and report.blocks == []
    assert report.hints == [
        "nothing was converted: every re-parameterizable block is already deployed (0, 1) "
        "and no Conv->BN pair is left to fold"
    ]


def test_a_single_bn_fold_counts_as_a_conversion():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    report = reparam.verify(model, input_shape=(1, 3, 6, 6), randomize_bn=True)
    assert report.ok and (report.blocks_converted, report.bn_folds) == (0, 1), str(report)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_verify_with_their_own_tolerance(dtype):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), RepVGGBlock(8, 8))
    randomize_bn_(model, seed=2)
    report = reparam.verify(model.eval().to(dtype), input_shape=(1, 3, 12, 12))
    assert report.dtype == dtype and report.rtol == reparam.verification.default_rtol(dtype)
    assert report.ok, str(report)
    assert 0 < report.max_rel <= report.rtol


def test_report_table_lines_up():
    model = nn.Sequential(RepVGGBlock(3, 4), RepVGGBlock(4, 4)).eval()
    lines = reparam.verify(model, input_shape=(1, 3, 8, 8), dtype=torch.float64).table().splitlines()
    assert lines[0].split() == ["block", "type", "max_abs", "max_rel", "ok"]
    assert [ln.split()[0] for ln in lines[1:]] == ["0", "1", "END-TO-END"]
    assert lines[-1].split()[1] == "float64" and lines[-1].split()[-1] == "yes"
    assert len({len(ln) for ln in lines}) == 1, "fixed-width rows"


def test_relative_error_over_nested_outputs():
    a, b = torch.tensor([1.0, -4.0]), torch.tensor([2.0])
    ref = (a, {"x": [b, 3], "y": None})
    assert relative_error(ref, ref) == (0.0, 0.0)
    got = (a + 0.5, {"x": [b, 3], "y": None})
    assert relative_error(ref, got) == (0.5, 0.125)  # 0.5 / max|ref| = 0.5 / 4
    assert relative_error(ref, (a, {"x": [b, 2], "y": None})) == (1.0, 0.25)  # numbers compare as scalars
    assert relative_error(torch.zeros(3), torch.zeros(3)) == (0.0, 0.0)
    assert relative_error([], []) == (0.0, 0.0)


@pytest.mark.parametrize(
    "other",
    [
        (torch.ones(2),),  # shorter
        (torch.ones(2), torch.ones(3)),  # shape
        (torch.ones(2), {"y": torch.ones(2)}),  # keys
        (torch.ones(2), [torch.ones(2)]),  # tensor vs list
        (torch.ones(2), {"x": "a"}),  # other leaves must be equal
    ],
    ids=["length", "shape", "keys", "kind", "leaf"],
)
def test_relative_error_structure_mismatch_is_inf(other):
    assert relative_error((torch.ones(2), {"x": torch.ones(2)}), other) == (math.inf, math.inf)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("side", ["reference", "other"])
def test_relative_error_nonfinite_anywhere_is_inf(bad, side):
    clean = [torch.ones(3), torch.ones(2, 2)]
    broken = [torch.ones(3), torch.ones(2, 2)]
    broken[1][1, 0] = bad  # not the first output: a max() would drop a NaN here
    args = (broken, clean) if side == "reference" else (clean, broken)
    assert relative_error(*args) == (math.inf, math.inf)


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(finite, min_size=1, max_size=12),
    st.lists(finite, min_size=1, max_size=12),
    st.sampled_from([torch.float32, torch.float64]),
    st.floats(0.25, 8.0),
)
def test_relative_error_properties(xs, ys, dtype, scale):
    n = min(len(xs), len(ys))
    x, y = torch.tensor(xs[:n], dtype=dtype), torch.tensor(ys[:n], dtype=dtype)
    max_abs, max_rel = relative_error(x, y)
    assert max_abs == pytest.approx(float((x.double() - y.double()).abs().max()))
    if x.abs().max() > 0:
        assert max_rel == pytest.approx(max_abs / float(x.double().abs().max()))
        # The relative error does not depend on the scale; nesting does not change the numbers.
        assert relative_error(x.double() * scale, y.double() * scale)[1] == pytest.approx(max_rel, rel=1e-9)
    else:
        assert max_rel == (0.0 if max_abs == 0.0 else math.inf)
    assert relative_error(x, x) == (0.0, 0.0)
    assert relative_error({"k": [x]}, {"k": (y,)}) == (max_abs, max_rel)
