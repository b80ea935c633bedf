"""reparam: structural re-parameterization and dynamic convolution for PyTorch and Ultralytics YOLO."""

from reparam import algebra
from reparam.blocks import QARepVGGBlock, ReparamBlock, RepVGGBlock
from reparam.convert import VerifyReport, reparameterize, verify

__version__ = "0.1.0"

__all__ = [
    "QARepVGGBlock",
    "RepVGGBlock",
    "ReparamBlock",
    "VerifyReport",
    "__version__",
    "algebra",
    "reparameterize",
    "verify",
]
