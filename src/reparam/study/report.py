"""Study report: the learning-rate sweep, per-variant mean and std over seeds, paired differences to plain
with 95 % intervals; CSVs (runs, sweep, summary, paired), ``report.json`` (recipe and notes), a PNG of
metric vs deploy latency, and study.md rendered from those files alone (:func:`render_report`: the Markdown
is regenerated from committed CSVs). Every file is written to a temporary name in ``out`` and renamed."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from reparam.bench.report import PLOT_RC, markdown_table, new_figure, write_csv
from reparam.io import atomic_path, atomic_write_text
from reparam.study.runner import RunRecord, StudyTask, VariantProfile, clock
from reparam.study.stats import paired_difference

__all__ = [
    "REPORT_FILES",
    "cell",
    "edge_notes",
    "existing_reports",
    "known_variants",
    "paired_rows",
    "render_report",
    "rewrite_markdown",
    "summarize",
    "sweep_rows",
    "write_report",
]

REPORT_FILES = {
    "markdown": "study.md",
    "runs": "runs.csv",
    "sweep": "sweep.csv",
    "summary": "summary.csv",
    "paired": "paired.csv",
    "meta": "report.json",
    "plot": "study.png",
}


def known_variants(task: str) -> tuple[str, ...]:
    """Variant names of ``task`` ("classification" or "detection")."""
    if task == "classification":
        from reparam.models.small_cnn import SMALL_CNN_BLOCKS

        return tuple(SMALL_CNN_BLOCKS)
    from reparam.study.detection import DETECTION_MODELS

    return tuple(DETECTION_MODELS)


def existing_reports(out: Path) -> list[str]:
    """Names of report files already in ``out``."""
    return [name for name in REPORT_FILES.values() if (out / name).exists()]


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(
    runs: Sequence[RunRecord],
    profiles: Mapping[str, VariantProfile],
    variants: Sequence[str],
    chosen: Mapping[str, float],
) -> list[dict[str, object]]:
    """One row per variant: its rate, mean and std over seeds of every metric, time, memory; deploy cost."""
    rows = []
    for v in variants:
        mine = [r for r in runs if r.variant == v]
        row: dict[str, object] = {"variant": v, "lr": chosen[v], "seeds": len(mine)}
        series: dict[str, list[float]] = {m: [r.metrics[m] for r in mine] for m in mine[0].metrics}
        series["train s/epoch"] = [r.train_s_per_epoch for r in mine]
        peaks = [r.peak_mb_per_epoch for r in mine if r.peak_mb_per_epoch is not None]
        if peaks:
            series["peak MB/epoch"] = peaks
        for name, values in series.items():
            row[f"{name} mean"], row[f"{name} std"] = _mean_std(values)
        p = profiles[v]
        row.update(
            {"params train": p.params_train, "params deploy": p.params_deploy, "GFLOPs deploy": p.gflops}
        )
        for label, t in p.latency.items():
            row[f"{label} ms"] = t.median_ms
            row[f"{label} p10-p90 ms"] = f"{t.p10_ms:.3f}-{t.p90_ms:.3f}"
        for label in p.latency:
            if label.startswith("ort int8 "):
                batch = label.removeprefix("ort int8 ")
                row[f"int8 speedup {batch}"] = (
                    p.latency[f"ort fp32 {batch}"].median_ms / p.latency[label].median_ms
                )
        rows.append(row)
    return rows


def paired_rows(
    runs: Sequence[Mapping[str, object]], metrics: Sequence[str], reference: str = "plain"
) -> list[dict[str, object]]:
    """Per variant and metric: mean over seeds of (variant - ``reference``, same seed), 95 % t-interval.

    ``runs`` are rows with "variant", "seed" and the metrics (numbers or their text).
    """
    values: dict[tuple[str, int], Mapping[str, object]] = {
        (str(r["variant"]), int(r["seed"])): r for r in runs
    }
    variants = list(dict.fromkeys(str(r["variant"]) for r in runs))
    rows: list[dict[str, object]] = []
    for v in variants:
        if v == reference:
            continue
        seeds = sorted(s for (w, s) in values if w == v and (reference, s) in values)
        for m in metrics:
            if not seeds or m not in values[(v, seeds[0])]:
                continue
            mean, lo, hi = paired_difference(
                [float(values[(v, s)][m]) for s in seeds], [float(values[(reference, s)][m]) for s in seeds]
            )
            rows.append(
                {
                    "variant": v,
                    "metric": m,
                    "seeds": len(seeds),
                    "diff mean": mean,
                    "ci95 low": lo,
                    "ci95 high": hi,
                }
            )
    return rows


def sweep_rows(sweep: Sequence[Mapping[str, object]], metric: str) -> list[dict[str, object]]:
    """Variant x rate -> mean validation ``metric`` over the sweep seeds, and the chosen (best) rate."""
    table: dict[str, dict[float, list[float]]] = {}
    for r in sweep:
        table.setdefault(str(r["variant"]), {}).setdefault(float(str(r["lr"])), []).append(
            float(str(r[metric]))
        )
    rows: list[dict[str, object]] = []
    for v, by_lr in table.items():
        means = {lr: statistics.fmean(x) for lr, x in by_lr.items()}
        best = max(means, key=means.__getitem__)
        rows.append({"variant": v, **{f"lr {lr:g}": means[lr] for lr in means}, "chosen lr": best})
    return rows


def _num(v: object, decimals: int | None = None) -> str:
    """A number as text: 2 decimals from 1 up (percentages, ms), 4 below (mAP, ratios); ints unchanged."""
    if isinstance(v, float):
        if decimals is None:
            decimals = 2 if v == 0 or abs(v) >= 1 else 4
        return f"{v:.{decimals}f}"
    return "" if v is None else str(v)


def cell(row: Mapping[str, object], col: str) -> str:
    """A summary cell as text: "mean ± std" for a "<name> mean" column (std in the mean's decimals; no std
    for one seed)."""
    if not col.endswith(" mean"):
        return _num(row.get(col))
    mean, std = row[col], row.get(col.removesuffix(" mean") + " std")
    text = _num(mean)
    if std is None:
        return text
    decimals = len(text.rsplit(".", 1)[1]) if "." in text else 2
    return f"{text} ± {_num(float(std), decimals)}"


def _display(rows: Sequence[Mapping[str, object]], shown: Sequence[str]) -> list[dict[str, str]]:
    """The Markdown summary: rate, shown metrics, time, memory, deploy cost and latency medians."""
    cols = [f"{m} mean" for m in shown] + ["train s/epoch mean", "peak MB/epoch mean"]
    cols += ["params train", "params deploy", "GFLOPs deploy"]
    cols += [c for c in rows[0] if (c.endswith(" ms") and "p10" not in c) or c.startswith("int8 speedup")]
    return [
        {
            "variant": str(r["variant"]),
            "lr": f"{float(str(r['lr'])):g}",
            "seeds": str(r["seeds"]),
            **{c.removesuffix(" mean"): cell(r, c) for c in cols if c in r},
        }
        for r in rows
    ]


def _headline(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """RepVGG vs QARepVGG after INT8, per-channel and per-tensor (plain for reference), when measured."""
    by = {r["variant"]: r for r in rows}
    if not {"repvgg", "qarepvgg"} <= by.keys() or "top1 int8 mean" not in by["repvgg"]:
        return []
    cols = ("top1 mean", "top1 int8 mean", "int8 drop mean", "top1 int8 per-tensor mean")
    cols += ("int8 per-tensor drop mean", "int8 per-tensor agreement mean")
    table = [
        {"variant": v, **{c.removesuffix(" mean"): cell(by[v], c) for c in cols if c in by[v]}}
        for v in ("plain", "repvgg", "qarepvgg")
        if v in by
    ]
    return [
        "## Headline: RepVGG vs QARepVGG after INT8 post-training quantization",
        "",
        "Top-1 in %, drop in percentage points (onnxruntime fp32 minus INT8, same deploy form), with",
        "per-channel and per-tensor weight scales (the QARepVGG paper's collapse is per-tensor); agreement:",
        "share of test images whose INT8 class equals the fp32 class. Mean ± std over seeds.",
        "",
        markdown_table(table),
        "",
    ]


def _sweep_section(sweep: Sequence[Mapping[str, object]], metric: str) -> list[str]:
    if not sweep:
        return []
    rows = sweep_rows(sweep, f"val {metric}")
    seeds = sorted({int(str(r["seed"])) for r in sweep})
    text = [{k: (f"{v:g}" if k == "chosen lr" else _num(v)) for k, v in r.items()} for r in rows]
    edge = edge_notes(rows)
    return [
        f"## Learning-rate sweep (validation {metric} of the deploy form, mean over sweep seeds {seeds})",
        "",
        "Trained on the training data minus the validation split; the chosen rate is the best one and the",
        "only one the test runs use.",
        "",
        markdown_table(text),
        "",
        *(f"- {note}" for note in edge),
        *([""] if edge else []),
    ]


def edge_notes(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """A note per variant whose chosen rate is the largest or smallest one swept: its best rate may lie
    beyond the grid, so the sweep did not bracket it."""
    notes = []
    for r in rows:
        rates = sorted(float(k.removeprefix("lr ")) for k in r if k.startswith("lr "))
        chosen = float(str(r["chosen lr"]))
        if len(rates) > 1 and chosen in (rates[0], rates[-1]):
            side, beyond = ("largest", "larger") if chosen == rates[-1] else ("smallest", "smaller")
            notes.append(
                f"{r['variant']}: the chosen rate {chosen:g} is the {side} swept "
                f"({rates[0]:g} .. {rates[-1]:g}); its best rate may lie beyond the grid (sweep {beyond} "
                "rates to bracket it)"
            )
    return notes


def _paired_section(runs: Sequence[Mapping[str, object]], metrics: Sequence[str]) -> list[str]:
    rows = paired_rows(runs, metrics)
    if not rows:
        return []
    text = [
        {
            "variant": r["variant"],
            "metric": r["metric"],
            "seeds": r["seeds"],
            "variant - plain": _num(r["diff mean"]),
            "95 % interval": "n/a (one seed)"
            if r["ci95 low"] is None
            else f"{_num(r['ci95 low'])} .. {_num(r['ci95 high'])}",
        }
        for r in rows
    ]
    return [
        "## Paired difference to plain (same seed, each at its chosen rate)",
        "",
        "Mean over seeds of (variant - plain) on the test data, 95 % Student-t interval over the seeds:",
        "an interval that excludes 0 is a difference the seeds resolve.",
        "",
        markdown_table(text),
        "",
    ]


def _plot(
    png: Path, rows: Sequence[Mapping[str, object]], profiles: Mapping[str, VariantProfile], study: StudyTask
) -> None:
    import matplotlib

    panels = [(study.metric, study.plot_latency[0])]
    if study.plot_latency[1] is not None:
        panels.append((f"{study.metric} int8", study.plot_latency[1]))
    with matplotlib.rc_context(PLOT_RC):
        fig = new_figure(4.6 * len(panels), 3.8)
        for ax, (metric, label) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
            for i, r in enumerate(rows):
                t = profiles[str(r["variant"])].latency[label]
                std = r.get(f"{metric} std")
                ax.errorbar(
                    t.median_ms,
                    r[f"{metric} mean"],
                    yerr=std or 0.0,
                    xerr=[[max(0.0, t.median_ms - t.p10_ms)], [max(0.0, t.p90_ms - t.median_ms)]],
                    fmt="o",
                    capsize=3,
                    color=f"C{i}",
                    label=str(r["variant"]),
                )
            ax.set(
                title=f"{metric} vs deploy latency ({label})",
                xlabel="median ms per call (p10-p90)",
                ylabel=f"{metric} (mean ± std over seeds)",
            )
            ax.legend(fontsize=7)
        fig.savefig(png, format="png")


def _typed(value: str) -> object:
    """A CSV cell back as int, float, None (empty) or text."""
    if value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _read_csv(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _typed(v) for k, v in row.items()} for row in csv.DictReader(f)]


def render_report(folder: str | Path) -> str:
    """The Markdown report of a study folder, from its CSVs and ``report.json`` only (no training): the
    command that regenerates study.md and the README's evidence tables from the committed CSVs."""
    folder = Path(folder)
    meta_path = folder / REPORT_FILES["meta"]
    if not meta_path.is_file():
        raise ValueError(f"{folder} holds no study ({REPORT_FILES['meta']} missing)")
    meta = json.loads(meta_path.read_text())
    runs = _read_csv(folder / REPORT_FILES["runs"])
    sweep = _read_csv(folder / REPORT_FILES["sweep"])
    summary = _read_csv(folder / REPORT_FILES["summary"])
    metric, shown = str(meta["metric"]), list(meta["shown"])
    run_rows = [
        {
            "variant": r["variant"],
            "lr": f"{float(str(r['lr'])):g}",
            "seed": r["seed"],
            **{m: _num(r.get(m)) for m in shown if m in r},
            "train s/epoch": _num(r["train s/epoch"]),
            "peak MB/epoch": _num(r["peak MB/epoch"]),
            "run s": _num(r["run s"]),
        }
        for r in runs
    ]
    differ = [
        f"{r['variant']} seed {r['seed']}: deploy {metric} {r[metric]} differs from the training form's "
        f"{r[metric + ' train form']}"
        for r in runs
        if f"{metric} train form" in r and r[metric] != r[f"{metric} train form"]
    ]
    notes = [*meta["notes"], *differ]
    seconds = sum(float(str(r["run s"])) for r in [*runs, *sweep])
    return "\n".join(
        [
            f"# reparam study: {meta['task']}",
            "",
            *(f"- {k}: {v}" for k, v in meta["config"].items()),
            f"- compute: {len(sweep)} sweep runs + {len(runs)} test runs, {clock(seconds)} of run time "
            "in all (sum over runs)",
            "",
            *_headline(summary),
            *_sweep_section(sweep, metric),
            "## Summary (mean ± std over seeds; every metric measured on the deploy form after conversion)",
            "",
            markdown_table(_display(summary, shown)),
            "",
            *_paired_section(runs, meta["paired"]),
            f"![{metric} vs deploy latency]({REPORT_FILES['plot']})",
            "",
            "Latency: medians of interleaved rounds (`reparam.bench.latency.compare_latency`), every",
            "variant's deploy form timed side by side in one process. All columns, p10-p90 spreads and stds:",
            f"`{REPORT_FILES['summary']}`; every run: `{REPORT_FILES['runs']}`, `{REPORT_FILES['sweep']}`.",
            f"Regenerate this file from the CSVs: `reparam study report=True out={folder}`.",
            "",
            *(["## Notes", "", *(f"- {n}" for n in notes), ""] if notes else []),
            "## Runs",
            "",
            markdown_table(run_rows),
            "",
        ]
    )


def _record_row(r: RunRecord) -> dict[str, object]:
    return {
        "variant": r.variant,
        "lr": r.lr,
        "seed": r.seed,
        **r.metrics,
        "train s/epoch": r.train_s_per_epoch,
        "peak MB/epoch": r.peak_mb_per_epoch,
        "run s": r.seconds,
    }


def write_report(
    out: Path,
    task: str,
    study: StudyTask,
    runs: Sequence[RunRecord],
    sweep: Sequence[RunRecord],
    summary: Sequence[Mapping[str, object]],
    profiles: Mapping[str, VariantProfile],
    config: Mapping[str, object],
) -> dict[str, Path]:
    """Write the CSVs, ``report.json``, study.png and study.md (rendered from those files) into ``out``,
    each atomically; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {k: out / name for k, name in REPORT_FILES.items()}
    plot = importlib.util.find_spec("matplotlib") is not None  # the core install: tables and CSV only
    if not plot:
        files.pop("plot")
        study.notes.append("study.png not drawn: matplotlib is not installed (pip install matplotlib)")
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    meta = {
        "task": task,
        "metric": study.metric,
        "shown": list(study.shown),
        "paired": list(study.paired),
        "config": {**config, "machine": machine},
        "notes": list(study.notes),
    }
    # A study in ``out`` is this recipe's (run_study checked it): its report files are replaced.
    run_rows = [_record_row(r) for r in runs]
    write_csv(files["runs"], run_rows, overwrite=True)
    if sweep:
        write_csv(files["sweep"], [_record_row(r) for r in sweep], overwrite=True)
    else:
        files["sweep"].unlink(missing_ok=True)
        del files["sweep"]
    write_csv(files["summary"], summary, overwrite=True)
    paired = paired_rows(run_rows, study.paired)
    if paired:
        write_csv(files["paired"], paired, overwrite=True)
    else:
        files["paired"].unlink(missing_ok=True)
        del files["paired"]
    atomic_write_text(json.dumps(meta, indent=1), files["meta"], overwrite=True)
    if plot:
        with atomic_path(files["plot"], overwrite=True) as tmp:
            _plot(tmp, summary, profiles, study)
    rewrite_markdown(out)
    return files


def rewrite_markdown(out: Path) -> str:
    """Render ``out/study.md`` from the CSVs and ``report.json`` there, write it atomically, return it."""
    text = render_report(out)
    atomic_write_text(text, out / REPORT_FILES["markdown"], overwrite=True)
    return text
