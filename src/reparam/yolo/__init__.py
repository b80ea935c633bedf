"""The Ultralytics plug-in: reparam blocks in model YAMLs, conversion in fuse(), zoo, deploy checkpoints.

``import reparam.yolo`` registers everything (idempotent); ``register()`` does it explicitly.
"""

from __future__ import annotations

from reparam.yolo.deploy import deploy_checkpoint
from reparam.yolo.hooks import convert_model, patch_fuse, patch_yaml_lookup, pending_blocks
from reparam.yolo.integration import SUPPORTED_RANGE, cfg_dir, register_blocks, register_safe_globals
from reparam.yolo.offline import setup_offline
from reparam.yolo.zoo import plain_counterpart, zoo_names, zoo_path

__all__ = [
    "SUPPORTED_RANGE",
    "ReparamDetectionTrainer",
    "convert_model",
    "deploy_checkpoint",
    "pending_blocks",
    "plain_counterpart",
    "register",
    "setup_offline",
    "zoo_names",
    "zoo_path",
]


def register() -> list[str]:
    """Register every reparam block with Ultralytics, patch fuse()/is_fused()/YAML lookup, allow safe
    loading of reparam classes and set up offline use; returns the registered YAML names (idempotent)."""
    names = register_blocks()
    register_safe_globals()
    patch_fuse()
    patch_yaml_lookup(cfg_dir())
    setup_offline()
    return names


register()

from reparam.yolo.trainer import ReparamDetectionTrainer  # noqa: E402  (needs the registration above)
