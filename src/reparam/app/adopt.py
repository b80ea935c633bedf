"""``reparam adopt``: turn a trained Ultralytics checkpoint into a reparam training checkpoint that computes
the same function and fine-tunes with ``reparam train`` (or ``YOLO(out).train(...)``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reparam.adoption import AdoptReport
from reparam.checks import strict_bools
from reparam.yolo.adopt import WHERE, AdoptCheckError, adopt_checkpoint

__all__ = ["AdoptCheckError", "adopt", "parse_where"]


def parse_where(where: str | Sequence[int]) -> str | list[int]:
    """'zoo', 'all3x3', or comma-separated ``Conv`` row indices ('0,1,3') as a list of ints."""
    if not isinstance(where, str):
        return list(where)
    if where.lower() in WHERE:
        return where.lower()
    try:
        rows = [int(s) for s in where.split(",") if s.strip()]
    except ValueError:
        rows = []
    if not rows:
        raise ValueError(f"where={where!r} must be zoo, all3x3 or comma-separated Conv row indices (0,1,3)")
    return rows


@strict_bools
def adopt(
    model: str | Path,
    to: str,
    where: str | Sequence[int] = "zoo",
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    trust: bool = False,
) -> tuple[Path, AdoptReport]:
    """Adopt ``model`` (an Ultralytics ``.pt`` checkpoint or model YAML) into ``to`` blocks and write the
    training checkpoint ``out`` (default ``<model stem>-<to>.pt``; an existing file is refused unless
    ``overwrite``); see :func:`reparam.yolo.adopt_checkpoint`. Returns the file and the adoption report;
    raises AdoptCheckError (a failed check; nothing written) if the function or the YAML rebuild differs."""
    return adopt_checkpoint(model, to, out, parse_where(where), overwrite=overwrite, trust=trust)
