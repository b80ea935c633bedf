"""Ultralytics' GFLOPs (model.info(), training logs, ``get_flops``) counting the real work of reparam blocks.

Ultralytics computes GFLOPs with thop, whose module hooks see ``nn.Conv2d`` but not the functional
convolutions of OREPA (kernel generated every forward) and DynamicConv, so it printed 7.8 GFLOPs for
yolov8n-orepa's training form, less than plain yolov8n's 8.9. ``patch_thop`` makes every ``thop.profile``
call use :func:`reparam.bench.macs.thop_rules` in addition to the caller's own rules. Passing them as
``custom_ops`` (rather than adding them to thop's global table) also makes thop's stride-proxy estimate
sample enough sizes to fit constant terms such as OREPA's kernel generation exactly.
"""

from __future__ import annotations

import functools
from typing import Any

from reparam.bench.macs import thop_rules

__all__ = ["patch_thop"]


def patch_thop() -> None:
    """Wrap ``thop.profile`` so reparam's counting rules join any ``custom_ops`` given (idempotent)."""
    import thop

    if getattr(thop.profile, "_reparam_patched", False):
        return
    original = thop.profile

    @functools.wraps(original)
    def profile(model: Any, inputs: Any, custom_ops: dict | None = None, *args: Any, **kwargs: Any) -> Any:
        """thop.profile with reparam's rules; the caller's own rules win for the same class."""
        return original(model, inputs, {**thop_rules(), **(custom_ops or {})}, *args, **kwargs)

    profile._reparam_patched = True  # type: ignore[attr-defined]
    thop.profile = profile
