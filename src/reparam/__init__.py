"""reparam: structural re-parameterization and dynamic convolution for PyTorch and Ultralytics YOLO."""

from reparam import algebra, models
from reparam.adoption import AdoptReport, adopt
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
    create_orepa,
    use_default_act,
)
from reparam.convert import reparameterize
from reparam.models import efficientrep_backbone, reppan_neck
from reparam.verification import VerifyReport, verify
from reparam.weights import LoadReport, load_weights

__version__ = "0.1.0"

__all__ = [
    "DBB",
    "OREPA",
    "AdoptReport",
    "DynamicConv",
    "DynamicConvBNAct",
    "LoadReport",
    "OREPARepVGG",
    "OREPA_1x1",
    "OREPA_LargeConv",
    "QARepVGGBlock",
    "RepVGGBlock",
    "ReparamBlock",
    "VerifyReport",
    "__version__",
    "adopt",
    "algebra",
    "create_orepa",
    "efficientrep_backbone",
    "load_weights",
    "models",
    "reparameterize",
    "reppan_neck",
    "use_default_act",
    "verify",
]
