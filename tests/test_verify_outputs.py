"""verify measures each output tensor and each channel against its own scale (issue 18 §1).

A broken small output (class scores in 0..1) beside a large one (boxes in pixels, ~640) must fail and be
named; a correct conversion of a model of mixed scales (and channels that are ~0 everywhere) must pass.
"""

import pytest
import torch
from torch import nn

import reparam
from reparam import RepVGGBlock
from reparam.convert import randomize_bn_
from reparam.verification import relative_error


def conv_bn(c1: int, c2: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, 3, 1, 1, bias=False), nn.BatchNorm2d(c2))


class Head(nn.Module):
    """The issue's example: ``cat([box(x) * 640, sigmoid(cls(x))], 1)``, boxes in pixels beside scores."""

    def __init__(self) -> None:
        super().__init__()
        self.box, self.cls = conv_bn(3, 4), conv_bn(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.box(x) * 640, self.cls(x).sigmoid()], 1)


def test_issue_example_a_bn_hook_that_moves_the_scores_fails_naming_output_and_channel():
    model = Head().eval()
    randomize_bn_(model, seed=1)
    model.cls[1].register_forward_hook(lambda _m, _a, out: out + 0.2)
    report = reparam.verify(model, input_shape=(1, 3, 8, 8))
    assert not report.ok, str(report)
    # The scores moved by ~0.05 on a scale of ~1: a rounding floor of their tensor (~1e3) still gives >1e-3.
    assert report.worst in {f"output channel {c}" for c in (4, 5, 6)}, report.worst
    assert report.max_rel > 1e-3
    text = str(report)
    assert f"at {report.worst}" in text and "cls.1 (BatchNorm2d): forward hook" in text


class Sloppy(nn.Module):
    """A protocol block whose deploy form is off by ``delta`` on its last channel (a broken conversion)."""

    def __init__(self, c1: int, c2: int, delta: float) -> None:
        super().__init__()
        self.conv, self.delta, self.deployed = nn.Conv2d(c1, c2, 1), delta, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.deployed:
            y = torch.cat([y[:, :-1], y[:, -1:] + self.delta], 1)
        return y

    def reparameterize(self) -> None:
        self.deployed = True


class TwoOutputs(nn.Module):
    """Boxes (x640) and, nested, scores: ``(boxes, (scores,))``."""

    def __init__(self, delta: float) -> None:
        super().__init__()
        self.box, self.cls = RepVGGBlock(3, 4), Sloppy(3, 3, delta)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        return self.box(x) * 640, (self.cls(x).sigmoid(),)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_small_output_broken_by_its_block_fails_and_is_named_even_without_per_block(dtype):
    model = TwoOutputs(delta=0.2).eval()
    randomize_bn_(model, seed=2)
    report = reparam.verify(model, input_shape=(1, 3, 8, 8), dtype=dtype, per_block=False)
    assert not report.ok and report.blocks == []
    assert report.worst == "output[1][0] channel 2", str(report)
    assert any(h.startswith("output[1][0] channel 2 differs most") for h in report.hints), report.hints


class Mixed(nn.Module):
    """Outputs of very different scales, a channel that is exactly 0 and one ~1e-6 of its tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(RepVGGBlock(3, 8), RepVGGBlock(8, 8, s=2))
        self.box = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.cls = RepVGGBlock(8, 3, k=3, act=False)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        y = self.body(x)
        box = self.box(y) * 640
        tiny = box[:, :1] * 1e-9
        zero = torch.zeros_like(tiny)
        return {"det": torch.cat([box, tiny, zero, self.cls(y).sigmoid()], 1), "aux": [y.mean(), y * 1e-3]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_correct_conversion_of_mixed_scales_passes(dtype):
    model = Mixed().eval()
    report = reparam.verify(model, input_shape=(2, 3, 16, 16), dtype=dtype, randomize_bn=True)
    assert report.ok, str(report)
    assert report.max_rel <= report.rtol and report.worst.startswith("output[")


def test_relative_error_floor_is_the_smallest_scale():
    zero, small = torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 1e-6, 0.0], dtype=torch.float64)
    assert relative_error(zero, small) == (1e-6, float("inf"))
    assert relative_error(zero, small, floor=1e-3) == pytest.approx((1e-6, 1e-3))
    ref = torch.tensor([2.0, -4.0])
    assert relative_error(ref, ref + 1.0, floor=1.0) == (1.0, 0.25)  # the floor never raises the scale
    assert relative_error(ref, ref + 1.0, floor=8.0) == (1.0, 0.125)
