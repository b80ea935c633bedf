"""Re-parameterizable and dynamic blocks, one module per family, all listed in the block registry."""

from reparam.blocks.act import default_act, resolve_act, use_default_act
from reparam.blocks.base import ReparamBlock, ReparamContainer, answers_protocol, autopad
from reparam.blocks.conv import ConvBNAct
from reparam.blocks.convbn import ConvBN
from reparam.blocks.dbb import DBB
from reparam.blocks.dynamic import Bottleneck_DynamicConv, C2f_DynamicConv, DynamicConv, DynamicConvBNAct
from reparam.blocks.efficientrep import BepC3, BiC, BottleRep, RepBlock, SimCSPSPPF, SimSPPF, Transpose
from reparam.blocks.orepa import OREPA, OREPA_1x1, OREPA_LargeConv, OREPARepVGG, create_orepa
from reparam.blocks.registry import BlockSpec, create_block, get_block, register_block, registered_blocks
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
    "ReparamContainer",
    "SimCSPSPPF",
    "SimSPPF",
    "Transpose",
    "answers_protocol",
    "autopad",
    "create_block",
    "create_orepa",
    "default_act",
    "get_block",
    "register_block",
    "registered_blocks",
    "resolve_act",
    "use_default_act",
]
