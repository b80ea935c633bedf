"""``reparam deploy``: write the deploy checkpoint of a training checkpoint and say what changed."""

from __future__ import annotations

from pathlib import Path

from reparam.app.models import blocks_used, load
from reparam.bench.profile import count_params
from reparam.checks import strict_bools
from reparam.yolo import deploy_checkpoint

__all__ = ["deploy"]


@strict_bools
def deploy(
    ckpt: str | Path, out: str | Path | None = None, *, overwrite: bool = False, trust: bool = False
) -> str:
    """Write the deploy checkpoint of ``ckpt``; returns a one-paragraph description of what was written.

    ``ckpt`` is read (and refused with a ValueError naming it when unreadable or unsafe; ``trust=True`` reads
    it with full pickle) before anything is written. ``out`` (default ``<ckpt stem>-deploy.pt``) is written
    atomically and an existing file is refused unless ``overwrite=True``.
    """
    if Path(ckpt).is_dir() or Path(ckpt).suffix.lower() != ".pt":
        raise ValueError(f"ckpt={ckpt} is {'a directory' if Path(ckpt).is_dir() else 'not a .pt file'}: "
                         "deploy takes an Ultralytics training checkpoint (.pt)")  # fmt: skip
    before = load(ckpt, trust=trust).model
    dst = deploy_checkpoint(ckpt, out, overwrite=overwrite, trust=trust)
    after = load(dst).model
    used = ", ".join(f"{k} x{v}" for k, v in sorted(blocks_used(before).items())) or "none"
    return (
        f"deploy checkpoint: {dst} ({dst.stat().st_size / 1e6:.1f} MB)\n"
        f"params {count_params(before):,} -> {count_params(after):,}; blocks converted: {used}"
    )
