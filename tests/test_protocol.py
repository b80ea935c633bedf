"""The conversion protocol (``deployed``, idempotent ``reparameterize()``) of every registered block.

Also checks through the registry that ``act=True`` of every block family means the model's default
activation (``use_default_act``), and only inside the ``with`` block.
"""

import copy

import pytest
import torch
from torch import nn

from reparam.blocks import (
    OREPA_1x1,
    OREPA_LargeConv,
    ReparamBlock,
    answers_protocol,
    create_block,
    registered_blocks,
    use_default_act,
)
from reparam.convert import randomize_bn_

# Small constructor arguments per registered name (default: (4, 4)) and the input shape (default 4 ch).
ARGS = {
    "OREPA_LargeConv": (4, 4, 5),
    "OREPA_1x1": (4, 6, 1),
    "DBB": (4, 8, 3, 2, None, 2),
    "QARepVGGBlock": (4, 4, 3, 1, None, 1, 1, True, True),
    "RepBlock": (4, 6, 2),
    "BepC3": (4, 6, 2),
    "BiC": ([4, 6, 2], 6),
    "C2f_DynamicConv": (4, 6, 2, True),
    "DynamicConvBNAct": (4, 6, 3, 2),
    "DynamicConv": (4, 6, 3),
}
NOTHING_TO_CONVERT = {"Transpose", "DynamicConv"}


def make_input(name: str) -> torch.Tensor | list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if name == "BiC":  # top (half resolution), same, lower (twice the resolution)
        return [torch.randn(2, c, s, s + s // 4, generator=gen) for c, s in ((4, 4), (6, 8), (2, 16))]
    return torch.randn(2, 4, 9, 8, generator=gen)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_block(name, *ARGS.get(name, (4, 4)))


NAMES = sorted(registered_blocks())


def test_the_table_builds_every_registered_block():
    assert {"ConvBNAct", "RepVGGBlock", "OREPA", "RepBlock", "BiC", "DynamicConvBNAct"} <= set(NAMES)
    for name in NAMES:
        assert isinstance(build(name), registered_blocks()[name].cls), name


@pytest.mark.parametrize("name", NAMES)
def test_reparameterize_is_exact_idempotent_and_flags_deployed(name):
    block = build(name)
    assert answers_protocol(block), name
    randomize_bn_(block, seed=2)
    block.eval()
    x = make_input(name)
    with torch.no_grad():
        expected = block(x)
    assert block.deployed is (name in NOTHING_TO_CONVERT)
    block.reparameterize()
    assert block.deployed is True
    once = copy.deepcopy(block.state_dict())
    block.reparameterize()
    assert block.deployed is True
    assert block.state_dict().keys() == once.keys()
    for key, value in block.state_dict().items():
        assert torch.equal(value, once[key]), key
    assert not [n for n, m in block.named_modules() if isinstance(m, nn.BatchNorm2d)], "a BN was left"
    with torch.no_grad():
        got = block(x)
    err = float((got - expected).abs().max() / expected.abs().max())
    assert err <= 1e-5, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize(
    "name", [n for n in NAMES if n in ("ConvBNAct",) or issubclass(registered_blocks()[n].cls, ReparamBlock)]
)
def test_single_conv_blocks_deploy_as_one_conv_and_activation(name):
    block = build(name).eval()
    block.reparameterize()
    assert set(block.state_dict()) == {"conv.weight", "conv.bias"}
    assert sorted(n for n, _ in block.named_children()) == ["act", "conv"]
    assert type(block.conv) is nn.Conv2d and block.conv.bias is not None
    assert not list(block.buffers(recurse=False))


def test_deployed_container_reports_an_unconverted_block_inside():
    block = build("RepBlock").eval()
    block.conv1.reparameterize()
    assert block.conv1.deployed and not block.deployed
    block.reparameterize()
    assert block.deployed and all(b.deployed for b in block.block)


def test_foreign_modules_do_not_answer_the_protocol():
    assert not answers_protocol(nn.Conv2d(2, 2, 1))
    assert not answers_protocol(nn.Sequential(build("RepVGGBlock")))
    assert answers_protocol(OREPA_1x1(2, 2)) and answers_protocol(OREPA_LargeConv(2, 2, 5))


def activations(module: nn.Module) -> list[nn.Module]:
    """The activation module of every (sub)block that has one."""
    return [m.act for m in module.modules() if isinstance(getattr(m, "act", None), nn.Module)]


@pytest.mark.parametrize("name", NAMES)
def test_act_true_is_the_model_default_activation_only_inside_the_context(name):
    with use_default_act("nn.ReLU6()"):
        inside = build(name)
    outside = build(name)
    if name in ("DynamicConv", "Transpose"):  # no activation at all
        assert not activations(inside) and not activations(outside)
        return
    assert activations(inside) and all(type(a) is nn.ReLU6 for a in activations(inside)), name
    assert activations(outside) and all(type(a) is nn.SiLU for a in activations(outside)), name
