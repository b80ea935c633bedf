"""The conversion protocol, checked once for every re-parameterizable block family."""

import copy

import pytest
import torch

from reparam import DBB, OREPA, OREPARepVGG, QARepVGGBlock, RepVGGBlock
from reparam.convert import randomize_bn_

BLOCKS = {
    "RepVGG": lambda: RepVGGBlock(4, 4, 3),
    "QARepVGG-V2": lambda: QARepVGGBlock(4, 4, 3, avg=True),
    "DBB": lambda: DBB(4, 8, 3, 2, g=2),
    "OREPA": lambda: OREPA(4, 4),
    "OREPA_1x1": lambda: OREPA(4, 6, 1),
    "OREPARepVGG": lambda: OREPARepVGG(4, 4),
    "OREPA_LargeConv": lambda: OREPA(4, 4, 5, large=True),
}


@pytest.mark.parametrize("make", BLOCKS.values(), ids=BLOCKS.keys())
def test_reparameterize_twice_equals_once_and_leaves_one_conv(make):
    block = make()
    randomize_bn_(block, seed=2)
    block.eval()
    x = torch.randn(1, 4, 9, 8)
    expected = block(x)
    block.reparameterize()
    once = copy.deepcopy(block.state_dict())
    block.reparameterize()
    assert set(block.state_dict()) == {"conv.weight", "conv.bias"}
    for key, value in block.state_dict().items():
        assert torch.equal(value, once[key])
    assert [n for n, _ in block.named_children()] == ["act", "conv"]
    assert not list(block.buffers(recurse=False))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-6)
