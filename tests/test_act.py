"""The one activation resolver (``resolve_act``) and the model-wide default (``use_default_act``)."""

import pytest
from torch import nn

from reparam.blocks import RepVGGBlock, default_act, resolve_act, use_default_act

ACCEPTED = [
    (True, nn.SiLU),
    (False, nn.Identity),
    (None, nn.Identity),
    ("relu", nn.ReLU),
    ("ReLU", nn.ReLU),
    ("silu", nn.SiLU),
    ("SiLU", nn.SiLU),
    ("relu6", nn.ReLU6),
    ("hardswish", nn.Hardswish),
    ("HardSwish", nn.Hardswish),
    ("leakyrelu", nn.LeakyReLU),
    ("gelu", nn.GELU),
    ("sigmoid", nn.Sigmoid),
    ("identity", nn.Identity),
    ("none", nn.Identity),
    ("None", nn.Identity),
    ("mish", nn.Mish),
    ("nn.ReLU()", nn.ReLU),
    ("nn.SiLU()", nn.SiLU),
    ("torch.nn.ReLU()", nn.ReLU),
    ("torch.nn.Hardswish()", nn.Hardswish),
    ("nn.Identity()", nn.Identity),
    (" nn.GELU() ", nn.GELU),
    ("nn.LeakyReLU(0.1)", nn.LeakyReLU),
]


@pytest.mark.parametrize(("act", "cls"), ACCEPTED, ids=[repr(a) for a, _ in ACCEPTED])
def test_every_accepted_form_gives_its_class(act, cls):
    module = resolve_act(act)
    assert type(module) is cls


def test_arguments_of_a_constructor_string_reach_the_module():
    assert resolve_act("nn.LeakyReLU(0.1)").negative_slope == 0.1
    assert resolve_act("torch.nn.ELU(alpha=0.5)").alpha == 0.5


def test_a_module_instance_is_returned_as_is_and_strings_build_new_modules():
    act = nn.PReLU()
    assert resolve_act(act) is act
    assert resolve_act("relu") is not resolve_act("relu")


REJECTED = [
    ("swish", "act='swish' is not an activation"),
    ("nn.ReLU", "act='nn.ReLU' is not an activation"),
    ("relu()", r"act='relu\(\)' is not an activation"),
    ("nn.Conv2d()", r"Conv2d is not in torch.nn's activations"),
    ("os.system('x')", "is not an activation"),
    ("nn.LeakyReLU(x)", "argument 'x' is not a literal"),
    ("nn.ReLU(**a)", r"\*\*kwargs are not accepted"),
    ("nn.Threshold()", "Threshold cannot be built from these arguments"),
    ("threshold", r"Threshold needs arguments: write 'nn.Threshold\(...\)'"),
    (1, "act=1 is not an activation"),
    (nn.ReLU, "is not an activation"),
    ("", "act='' is not an activation"),
]


@pytest.mark.parametrize(("act", "match"), REJECTED, ids=[repr(a) for a, _ in REJECTED])
def test_bad_forms_raise_naming_act_and_the_accepted_forms(act, match):
    with pytest.raises(ValueError, match=match) as info:
        resolve_act(act)
    assert "act accepts True (the default activation), False/None (no activation)" in str(info.value)
    assert "'nn.ReLU()'" in str(info.value)


def test_default_is_silu_and_the_context_overrides_it_then_restores():
    assert type(default_act()) is nn.SiLU
    with use_default_act("relu") as template:
        assert type(template) is nn.ReLU
        assert type(resolve_act(True)) is nn.ReLU
        assert type(RepVGGBlock(2, 2).act) is nn.ReLU
        with use_default_act(nn.Hardswish()):
            assert type(default_act()) is nn.Hardswish
        assert type(default_act()) is nn.ReLU
        assert type(RepVGGBlock(2, 2, act="gelu").act) is nn.GELU  # an explicit act wins
    assert type(default_act()) is nn.SiLU
    assert type(RepVGGBlock(2, 2).act) is nn.SiLU


def test_context_restores_the_default_after_an_error():
    with pytest.raises(RuntimeError), use_default_act("relu"):
        raise RuntimeError
    assert type(default_act()) is nn.SiLU


def test_each_block_gets_its_own_copy_of_the_default():
    with use_default_act(nn.PReLU()) as template:
        a, b = RepVGGBlock(2, 2).act, RepVGGBlock(2, 2).act
    assert type(a) is nn.PReLU and a is not b and a is not template
    assert a.weight is not b.weight


def test_bad_default_raises_on_entry():
    with pytest.raises(ValueError, match="act='swish' is not an activation"), use_default_act("swish"):
        pass
    assert type(default_act()) is nn.SiLU
