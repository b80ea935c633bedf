"""What one adoption did: layers replaced, candidates left alone and why, parameters, equivalence error."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from reparam.text import text_table

__all__ = ["AdoptCheckError", "AdoptReport", "AdoptedLayer", "SkippedLayer"]


class AdoptCheckError(RuntimeError):
    """The adopted model does not compute the original's function (a failed check, not bad input); the
    message names the unit(s) and ``report`` holds the measurement. Nothing of the caller's is changed."""

    def __init__(self, message: str, report: AdoptReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class AdoptedLayer:
    """One replaced unit: its path, what it was, the block it became and the tensors carried over."""

    name: str
    source: str  # class of the replaced module, with the BN when it was a separate child
    block: str
    kernel: int
    stride: int
    transferred: int
    note: str = ""


@dataclass(frozen=True)
class SkippedLayer:
    """A recognised Conv2d unit that was not replaced, and why."""

    name: str
    source: str
    reason: str


@dataclass
class AdoptReport:
    """Outcome of :func:`reparam.adopt`.

    ``skipped`` holds units that ``where`` selected but that cannot be adopted exactly (with the reason);
    ``not_selected`` the other recognised units (reason: why the selection left them out). The errors
    compare the original and the adopted model in eval mode on one random input of ``input_shape``.
    ``ok``: at least one layer replaced and the relative error within ``rtol`` (NaN/Inf never pass).
    """

    to: str
    layers: list[AdoptedLayer]
    skipped: list[SkippedLayer]
    not_selected: list[SkippedLayer]
    params_before: int
    params_after: int
    input_shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    rtol: float
    notes: list[str] = field(default_factory=list)

    @property
    def transferred(self) -> int:
        """Tensors taken over from the original model (conv weights and biases, BN affine and statistics)."""
        return sum(r.transferred for r in self.layers)

    @property
    def ok(self) -> bool:
        """True when something was adopted and the adopted model computes the original's function."""
        return bool(self.layers) and math.isfinite(self.max_rel_error) and self.max_rel_error <= self.rtol

    def table(self) -> str:
        """Replaced layers, then skipped candidates, as fixed-width text tables."""
        parts = []
        if self.layers:
            rows = [
                {
                    "layer": r.name or "<model>",
                    "from": r.source,
                    "to": r.block,
                    "k": r.kernel,
                    "s": r.stride,
                    "tensors": r.transferred,
                    "note": r.note,
                }
                for r in self.layers
            ]
            parts.append(text_table(rows))
        if self.skipped:
            rows = [
                {"skipped": r.name or "<model>", "from": r.source, "reason": r.reason} for r in self.skipped
            ]
            parts.append(text_table(rows))
        return "\n\n".join(parts)

    def summary(self) -> str:
        """One paragraph: counts, parameters, equivalence error and verdict."""
        why = Counter(r.reason for r in self.not_selected)
        left = "; ".join(f"{n} x {reason}" for reason, n in why.most_common())
        verdict = "OK" if self.ok else "FAILED"
        lines = [
            f"adopt -> {self.to}: {len(self.layers)} layer(s) replaced ({self.transferred} tensors "
            f"transferred), {len(self.skipped)} selected layer(s) skipped, "
            f"{len(self.not_selected)} not selected" + (f" ({left})" if left else ""),
            f"parameters {self.params_before:,} -> {self.params_after:,}",
            f"equivalence on a random input {tuple(self.input_shape)}: max abs error "
            f"{self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g} "
            f"(tolerance {self.rtol:g}): {verdict}",
            *self.notes,
        ]
        if not self.layers:
            lines.append("nothing was adopted: no selected Conv2d unit could be replaced")
        return "\n".join(lines)

    def __str__(self) -> str:
        table = self.table()
        return self.summary() + (f"\n\n{table}" if table else "")
