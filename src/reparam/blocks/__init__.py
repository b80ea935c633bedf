"""Re-parameterizable and dynamic blocks, one module per family, all listed in the block registry."""

from reparam.blocks.base import ReparamBlock, autopad, make_act
from reparam.blocks.conv import ConvBNAct
from reparam.blocks.convbn import ConvBN
from reparam.blocks.registry import BlockSpec, block_names, get_block, register_block, registered_blocks
from reparam.blocks.repvgg import QARepVGGBlock, RepVGGBlock

__all__ = [
    "BlockSpec",
    "ConvBN",
    "ConvBNAct",
    "QARepVGGBlock",
    "RepVGGBlock",
    "ReparamBlock",
    "autopad",
    "block_names",
    "get_block",
    "make_act",
    "register_block",
    "registered_blocks",
]
