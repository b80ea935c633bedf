"""Re-parameterizable and dynamic blocks, one module per family."""

from reparam.blocks.base import ReparamBlock, autopad, make_act
from reparam.blocks.convbn import ConvBN
from reparam.blocks.repvgg import QARepVGGBlock, RepVGGBlock

__all__ = [
    "ConvBN",
    "QARepVGGBlock",
    "RepVGGBlock",
    "ReparamBlock",
    "autopad",
    "make_act",
]
