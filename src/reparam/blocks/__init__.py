"""Re-parameterizable and dynamic blocks, one module per family, all listed in the block registry."""

from reparam.blocks.base import ReparamBlock, autopad, make_act
from reparam.blocks.conv import ConvBNAct
from reparam.blocks.convbn import ConvBN
from reparam.blocks.dbb import DBB
from reparam.blocks.dynamic import Bottleneck_DynamicConv, C2f_DynamicConv, DynamicConv, DynamicConvBNAct
from reparam.blocks.efficientrep import BepC3, BiC, BottleRep, RepBlock, SimCSPSPPF, SimSPPF, Transpose
from reparam.blocks.orepa import OREPA, OREPA_1x1, OREPA_LargeConv, OREPARepVGG
from reparam.blocks.registry import BlockSpec, block_names, get_block, register_block, registered_blocks
from reparam.blocks.repvgg import QARepVGGBlock, RepVGGBlock

__all__ = [
    "DBB",
    "OREPA",
    "BepC3",
    "BiC",
    "BlockSpec",
    "BottleRep",
    "Bottleneck_DynamicConv",
    "C2f_DynamicConv",
    "ConvBN",
    "ConvBNAct",
    "DynamicConv",
    "DynamicConvBNAct",
    "OREPARepVGG",
    "OREPA_1x1",
    "OREPA_LargeConv",
    "QARepVGGBlock",
    "RepBlock",
    "RepVGGBlock",
    "ReparamBlock",
    "SimCSPSPPF",
    "SimSPPF",
    "Transpose",
    "autopad",
    "block_names",
    "get_block",
    "make_act",
    "register_block",
    "registered_blocks",
]
