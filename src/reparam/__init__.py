"""reparam: structural re-parameterization and dynamic convolution for PyTorch and Ultralytics YOLO."""

from reparam import algebra, models
from reparam.blocks import (
    DBB,
    OREPA,
    DynamicConv,
    DynamicConvBNAct,
    OREPA_1x1,
    OREPA_LargeConv,
    OREPARepVGG,
    QARepVGGBlock,
    ReparamBlock,
    RepVGGBlock,
)
from reparam.convert import VerifyReport, reparameterize, verify
from reparam.models import efficientrep_backbone, reppan_neck

__version__ = "0.1.0"

__all__ = [
    "DBB",
    "OREPA",
    "DynamicConv",
    "DynamicConvBNAct",
    "OREPARepVGG",
    "OREPA_1x1",
    "OREPA_LargeConv",
    "QARepVGGBlock",
    "RepVGGBlock",
    "ReparamBlock",
    "VerifyReport",
    "__version__",
    "algebra",
    "efficientrep_backbone",
    "models",
    "reparameterize",
    "reppan_neck",
    "verify",
]
