"""adopt never returns a non-equivalent model and never half-rewrites the caller's (issue 18 §2, §6):
a convolution used twice (weight tying) stays tied or is refused naming every place; a model whose
forward does not follow the conv -> BN pairing adopt assumed is refused naming the unit, and with
``inplace=True`` the caller's model is left exactly as it was. Also the §6 constructor errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reparam.adoption import AdoptCheckError, adopt
from reparam.blocks.dynamic import Bottleneck_DynamicConv
from reparam.blocks.efficientrep import BepC3, BottleRep, RepBlock
from reparam.convert import randomize_bn_
from reparam.verification import relative_error


class Conv(nn.Module):
    """Ultralytics ``Conv`` look-alike: act(bn(conv(x)))."""

    def __init__(self, c1: int, c2: int, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _trained(model: nn.Module) -> nn.Module:
    model = model.double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3)
    randomize_bn_(model, 0)
    return model.eval()


def _x(c: int = 4) -> torch.Tensor:
    return torch.randn(2, c, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _snapshot(model: nn.Module) -> tuple[list[tuple[str, int]], dict[str, torch.Tensor]]:
    """Every module path with the identity of the module there, and a copy of every tensor."""
    modules = [(n, id(m)) for n, m in model.named_modules(remove_duplicate=False)]
    return modules, {k: v.clone() for k, v in model.state_dict().items()}


def _same_snapshot(a, b) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


# --------------------------------------------------------------------------- weight tying
@pytest.mark.parametrize("to", ["repvgg", "dbb", "orepa"])
def test_a_conv_module_used_twice_stays_tied(to: str) -> None:
    shared = Conv(4, 4)
    model = _trained(nn.Sequential(shared, nn.ReLU(), shared))
    new, report = adopt(model, to)
    assert report.ok, report
    assert new[0] is new[2] and not isinstance(new[0], Conv), "one adopted block in both places"
    assert [layer.name for layer in report.layers] == ["0", "2"]
    assert "tied" in report.layers[1].note and report.layers[1].transferred == 0
    with torch.no_grad():
        assert relative_error(model(_x()), new(_x()))[1] < 1e-12
    new.train()
    new(_x()).sum().backward()  # one set of parameters, trained by both uses
    assert sum(p.numel() for p in new.parameters()) == sum(p.numel() for p in new[0].parameters())


def test_a_tied_conv_with_two_different_bns_is_refused_naming_every_place() -> None:
    conv = nn.Conv2d(4, 4, 3, 1, 1, bias=False)
    model = _trained(nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), conv, nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match=r"shared \(weight tying\): it is used at '0', '1', '3', '4'"):
        adopt(model, "repvgg")


def test_a_tie_selected_at_one_place_only_is_refused() -> None:
    shared = Conv(4, 4)
    model = _trained(nn.Sequential(shared, nn.ReLU(), shared))
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"'0\.conv'.*'2\.conv'"):
        adopt(model, "dbb", where={"names": ["0"]}, inplace=True)
    assert _same_snapshot(before, _snapshot(model))


# --------------------------------------------------------------------------- verified, or refused
class BnBeforeConv(nn.Module):
    """Has children named conv1/bn1 (a torchvision-style pair), but applies bn1 BEFORE conv1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.head = Conv(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv1(self.bn1(x)))


@pytest.mark.parametrize("inplace", [False, True])
def test_a_non_equivalent_adoption_raises_naming_the_unit_and_changes_nothing(inplace: bool) -> None:
    model = _trained(BnBeforeConv())
    before = _snapshot(model)
    reference = model(_x())
    with pytest.raises(AdoptCheckError, match=r"refused: .*model is unchanged.*Unit\(s\): conv1 ") as info:
        adopt(model, "repvgg", inplace=inplace)
    assert "head" not in str(info.value).split("Unit(s):")[1]
    assert info.value.report is not None and not info.value.report.ok
    assert _same_snapshot(before, _snapshot(model))
    assert torch.equal(model(_x()), reference)


def test_the_input_shape_hint_names_the_python_api() -> None:
    model = _trained(nn.Sequential(Conv(3, 4), nn.Flatten(), nn.Linear(4 * 64 * 64, 2)))
    with pytest.raises(
        ValueError, match=r"input_shape=\(2, 3, 8, 8\).*reparam\.adopt\(model, to, input_shape="
    ):
        adopt(model, "repvgg", input_shape=(2, 3, 8, 8))


# --------------------------------------------------------------------------- §6 constructor errors
def test_bottleneck_dynamicconv_k_must_be_a_pair() -> None:
    with pytest.raises(ValueError, match=r"^k must be a pair \(cv1 kernel, cv2 kernel\).*got int 3"):
        Bottleneck_DynamicConv(8, 8, k=3)


@pytest.mark.parametrize("make", [RepBlock, BottleRep, BepC3])
def test_a_block_class_without_the_ultralytics_arguments_is_named(make: type) -> None:
    with pytest.raises(
        ValueError, match=r"^block=Conv2d must accept Ultralytics-style arguments \(c1, c2, k, s, act"
    ):
        make(8, 8, block=nn.Conv2d)
