"""The Ultralytics plug-in: reparam blocks in model YAMLs, conversion in fuse(), zoo, deploy checkpoints.

``import reparam.yolo`` registers everything (idempotent; it patches Ultralytics in memory and writes no
file); ``register()`` does it explicitly. Blocks registered later are picked up by the next YAML build.
"""

from __future__ import annotations

from reparam.yolo.adopt import adopt_checkpoint
from reparam.yolo.deploy import deploy_checkpoint
from reparam.yolo.flops import patch_thop
from reparam.yolo.hooks import convert_model, patch_fuse, patch_load, patch_yaml_lookup, pending_blocks
from reparam.yolo.integration import SUPPORTED_RANGE, cfg_dir, register_blocks, register_safe_globals
from reparam.yolo.zoo import plain_counterpart, zoo_names, zoo_path

__all__ = [
    "SUPPORTED_RANGE",
    "ReparamDetectionTrainer",
    "adopt_checkpoint",
    "convert_model",
    "deploy_checkpoint",
    "pending_blocks",
    "plain_counterpart",
    "register",
    "zoo_names",
    "zoo_path",
]


def register() -> list[str]:
    """Register every reparam block with Ultralytics, patch fuse()/is_fused()/load()/YAML lookup and its
    GFLOPs counter, allow safe loading of reparam classes; returns the YAML names (idempotent, no file)."""
    names = register_blocks()
    register_safe_globals()
    patch_fuse()
    patch_load()
    patch_yaml_lookup(cfg_dir())
    patch_thop()
    return names


register()

from reparam.yolo.trainer import ReparamDetectionTrainer  # noqa: E402  (needs the registration above)
