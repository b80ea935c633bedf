"""Side-by-side latency: every candidate is timed in interleaved rounds so drift hits all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reparam.text import Progress, say, text_table

__all__ = ["Timing", "compare_latency", "format_ratios"]


@dataclass
class Timing:
    """Median and spread (10th/90th percentile) of one candidate's per-call wall time in ms."""

    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def ratio_to(self, other: Timing) -> float:
        """This candidate's median divided by ``other``'s."""
        return self.median_ms / other.median_ms


def _sync(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


@torch.inference_mode()
def compare_latency(
    candidates: Mapping[str, nn.Module | Callable[[Tensor], object]],
    x: Tensor,
    rounds: int = 30,
    calls_per_round: int = 3,
    warmup: int = 3,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time every candidate on ``x`` in interleaved rounds; returns medians per call in ms.

    Each round runs every candidate ``calls_per_round`` times back to back (in a rotating order), so
    a slow spell of the machine affects all candidates rather than the one that happened to run then.
    ``clock=time.process_time`` measures CPU time instead of wall time, which other processes on a
    shared machine disturb less.
    """
    if rounds < 1 or calls_per_round < 1 or warmup < 0:
        raise ValueError(
            "rounds and calls_per_round must be >= 1 and warmup >= 0, "
            f"got rounds={rounds}, calls_per_round={calls_per_round}, warmup={warmup}"
        )
    if not candidates:
        raise ValueError("candidates must name at least one model")
    names = list(candidates)
    for fn in candidates.values():
        if isinstance(fn, nn.Module):
            fn.eval()
        for _ in range(warmup):
            fn(x)
    _sync(x)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            fn = candidates[n]
            t0 = clock()
            for _ in range(calls_per_round):
                fn(x)
            _sync(x)
            samples[n].append((clock() - t0) * 1e3 / calls_per_round)
        if (r + 1) % max(1, rounds // 5) == 0:
            say(progress, f"  round {r + 1}/{rounds}")
    out = {}
    for n, s in samples.items():
        q = statistics.quantiles(s, n=10) if len(s) > 1 else [s[0]] * 9
        out[n] = Timing(n, statistics.median(s), q[0], q[-1], len(s))
    return out


def format_ratios(timings: Mapping[str, Timing], baseline: str) -> str:
    """A text table of medians, spread and their ratio to ``baseline``."""
    if baseline not in timings:
        raise ValueError(f"baseline {baseline!r} is not among the timed candidates {list(timings)}")
    base = timings[baseline]
    rows = [
        {
            "model": n,
            "median ms": f"{t.median_ms:.3f}",
            "p10": f"{t.p10_ms:.3f}",
            "p90": f"{t.p90_ms:.3f}",
            f"vs {baseline}": f"{t.ratio_to(base):.3f}",
        }
        for n, t in timings.items()
    ]
    return text_table(rows)
