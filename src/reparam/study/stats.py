"""Paired comparison over seeds: mean difference with a Student-t confidence interval (pure Python).

Why here and not scipy: the classification study runs with the core install (torch only).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence

__all__ = ["paired_difference", "t_quantile"]


def _t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (Simpson's rule on the density, x >= 0)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    n = 4000  # even; the error is far below the 1e-9 that the bisection asks for
    h = x / n
    total = 0.0
    for i in range(n + 1):
        w = 1 if i in (0, n) else (4 if i % 2 else 2)
        total += w * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2)
    return 0.5 + c * total * h / 3


@functools.cache  # a bisection over a numeric integral, asked for the same few (p, df) per report
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 <= p < 1) of Student's t with ``df`` >= 1 degrees of freedom."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-9 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def paired_difference(
    values: Sequence[float], reference: Sequence[float], confidence: float = 0.95
) -> tuple[float, float | None, float | None]:
    """Mean of ``values[i] - reference[i]`` and its two-sided ``confidence`` t-interval (None: one pair)."""
    if len(values) != len(reference) or not values:
        raise ValueError(
            f"paired_difference needs two equally long non-empty lists, got {len(values)}, {len(reference)}"
        )
    diffs = [a - b for a, b in zip(values, reference, strict=True)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None, None
    half = t_quantile(0.5 + confidence / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half
