"""Report writers: Markdown and CSV tables, PNG plots (training curves, latency bars, error per block).

Plots use matplotlib's object API with the Agg canvas (no pyplot state, no GUI backend) and its bundled
DejaVu Sans font, so nothing is fetched. Every file is written atomically (:func:`reparam.io.atomic_path`)
and an existing file is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reparam.bench.profile import FormProfile
from reparam.checks import strict_bools
from reparam.io import atomic_path
from reparam.text import columns

if TYPE_CHECKING:  # matplotlib is imported by the plotting functions only (tables and CSV need none)
    from matplotlib.figure import Figure

__all__ = [
    "PLOT_RC",
    "markdown_table",
    "new_figure",
    "plot_block_errors",
    "plot_latency",
    "plot_training_curves",
    "read_results_csv",
    "write_csv",
]

PLOT_RC = {"font.family": "DejaVu Sans", "font.size": 9}


def markdown_table(rows: Sequence[Mapping[str, object]]) -> str:
    """A GitHub Markdown table of ``rows`` (columns from all rows, first-seen order)."""
    if not rows:
        raise ValueError("rows must hold at least one row")
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


@strict_bools
def write_csv(path: Path, rows: Sequence[Mapping[str, object]], *, overwrite: bool = False) -> Path:
    """Write ``rows`` as CSV with a header (columns from all rows, first-seen order), atomically."""
    cols = columns(rows)
    with atomic_path(path, overwrite=overwrite) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def read_results_csv(path: Path) -> dict[str, list[float]]:
    """Ultralytics' per-epoch ``results.csv`` as column -> values (column names stripped)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no epochs")
    return {k.strip(): [float(r[k]) for r in rows] for k in rows[0]}


def new_figure(w: float, h: float) -> Figure:
    """A matplotlib figure on the Agg canvas (no pyplot state), sized ``w`` x ``h`` inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, png: Path, overwrite: bool) -> Path:
    with atomic_path(png, overwrite=overwrite) as tmp:
        fig.savefig(tmp)
    return png


@strict_bools
def plot_training_curves(
    results: Mapping[str, Sequence[float]], png: Path, *, overwrite: bool = False
) -> Path:
    """Losses (train and val) and validation mAP per epoch, from :func:`read_results_csv` output."""
    import matplotlib

    with matplotlib.rc_context(PLOT_RC):
        fig = new_figure(10, 3.4)
        ax_loss, ax_map = fig.subplots(1, 2)
        epochs = results["epoch"]
        for key in sorted(k for k in results if k.endswith("_loss")):
            style = "o-" if key.startswith("train/") else "o--"
            ax_loss.plot(epochs, results[key], style, markersize=3, label=key)
        ax_loss.set(title="losses (solid: train, dashed: val)", xlabel="epoch")
        ax_loss.legend(fontsize=7)
        for key in ("metrics/mAP50(B)", "metrics/mAP50-95(B)", "metrics/precision(B)", "metrics/recall(B)"):
            if key in results:
                label = key.removeprefix("metrics/").removesuffix("(B)")
                ax_map.plot(epochs, results[key], "o-", markersize=3, label=label)
        ax_map.set(title="validation (training form, EMA)", xlabel="epoch", ylim=(0, 1))
        ax_map.legend(fontsize=7)
        return _save(fig, png, overwrite)


@strict_bools
def plot_latency(
    profiles: Sequence[FormProfile], png: Path, title: str = "latency", *, overwrite: bool = False
) -> Path:
    """Grouped bars of median latency per form, one panel per batch size, p10-p90 as error bars."""
    import matplotlib

    batches = sorted({b for p in profiles for b in p.latency})
    with matplotlib.rc_context(PLOT_RC):
        fig = new_figure(4.2 * len(batches), 3.4)
        axes = fig.subplots(1, len(batches), squeeze=False)[0]
        for ax, b in zip(axes, batches, strict=True):
            rows = [p for p in profiles if b in p.latency]
            med = [p.latency[b].median_ms for p in rows]
            err = [
                [m - p.latency[b].p10_ms for m, p in zip(med, rows, strict=True)],
                [p.latency[b].p90_ms - m for m, p in zip(med, rows, strict=True)],
            ]
            bars = ax.bar(
                range(len(rows)), med, yerr=err, capsize=3, color=[f"C{i}" for i in range(len(rows))]
            )
            ax.bar_label(bars, labels=[f"{m:.1f}" for m in med], fontsize=7)
            ax.set_xticks(range(len(rows)), [p.name for p in rows], rotation=20, ha="right", fontsize=7)
            ax.set(title=f"{title}, batch {b}", ylabel="median ms per call")
        return _save(fig, png, overwrite)


@strict_bools
def plot_block_errors(
    names: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], float]],
    png: Path,
    *,
    overwrite: bool = False,
) -> Path:
    """Relative conversion error of every block (log scale), one bar series per label with its tolerance.

    ``series`` maps a label (e.g. ``"fp32"``) to (errors in ``names`` order, tolerance).
    """
    import matplotlib

    if not names:
        raise ValueError("names must list at least one block")
    for label, (errors, _) in series.items():
        if len(errors) != len(names):
            raise ValueError(f"series {label!r} has {len(errors)} errors for {len(names)} blocks")
    floor = 1e-18  # exact zeros still show as a bar on the log axis
    width = 0.8 / max(len(series), 1)
    with matplotlib.rc_context(PLOT_RC):
        fig = new_figure(max(6.5, 0.28 * len(names) + 2), 3.8)
        ax = fig.subplots()
        for i, (label, (errors, rtol)) in enumerate(series.items()):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
            ax.bar(xs, [max(e, floor) for e in errors], width=width, color=f"C{i}", label=label)
            ax.axhline(
                rtol, color=f"C{i}", linestyle="--", linewidth=1, label=f"{label} tolerance {rtol:.0e}"
            )
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set(
            title="conversion error per block (max |deploy - train| / max |train|)", ylabel="relative error"
        )
        # beside the axes, not over them: inside, the legend covered the last bars
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        return _save(fig, png, overwrite)
