"""Study report: per-variant mean and std over seeds, Markdown + CSV (runs and summary) + a PNG of metric vs
deploy latency with error bars. Every file is written to a temporary name in ``out`` and renamed."""

from __future__ import annotations

import importlib.util
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from reparam.bench.report import PLOT_RC, markdown_table, new_figure, write_csv
from reparam.io import atomic_path, atomic_write_text
from reparam.study.runner import RunRecord, StudyTask, VariantProfile

__all__ = ["REPORT_FILES", "cell", "existing_reports", "known_variants", "summarize", "write_report"]

REPORT_FILES = {"markdown": "study.md", "runs": "runs.csv", "summary": "summary.csv", "plot": "study.png"}


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
    runs: Sequence[RunRecord], profiles: Mapping[str, VariantProfile], variants: Sequence[str]
) -> list[dict[str, object]]:
    """One row per variant: mean and std over seeds of every metric, time and memory; deploy-form cost."""
    rows = []
    for v in variants:
        mine = [r for r in runs if r.variant == v]
        row: dict[str, object] = {"variant": v, "seeds": len(mine)}
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
    """The Markdown summary: shown metrics, time, memory, deploy cost and latency medians."""
    cols = [f"{m} mean" for m in shown] + ["train s/epoch mean", "peak MB/epoch mean"]
    cols += ["params train", "params deploy", "GFLOPs deploy"]
    cols += [c for c in rows[0] if (c.endswith(" ms") and "p10" not in c) or c.startswith("int8 speedup")]
    return [
        {
            "variant": str(r["variant"]),
            "seeds": str(r["seeds"]),
            **{c.removesuffix(" mean"): cell(r, c) for c in cols if c in r},
        }
        for r in rows
    ]


def _headline(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """RepVGG vs QARepVGG after INT8 (plain for reference), when the study has all it needs."""
    by = {r["variant"]: r for r in rows}
    if not {"repvgg", "qarepvgg"} <= by.keys() or "top1 int8 mean" not in by["repvgg"]:
        return []
    cols = ("top1 mean", "top1 int8 mean", "int8 drop mean", "int8 agreement mean")
    table = [
        {"variant": v, **{c.removesuffix(" mean"): cell(by[v], c) for c in cols}}
        for v in ("plain", "repvgg", "qarepvgg")
        if v in by
    ]
    return [
        "## Headline: RepVGG vs QARepVGG after INT8 post-training quantization",
        "",
        "Top-1 in %, drop in percentage points (onnxruntime fp32 minus INT8, same deploy form);",
        "agreement: share of test images whose INT8 class equals the fp32 class. Mean ± std over seeds.",
        "",
        markdown_table(table),
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


def _markdown(
    task: str,
    study: StudyTask,
    runs: Sequence[RunRecord],
    summary: Sequence[Mapping[str, object]],
    config: Mapping[str, object],
) -> str:
    run_rows = [
        {
            "variant": r.variant,
            "seed": r.seed,
            **{m: _num(r.metrics[m]) for m in study.shown if m in r.metrics},
            "train s/epoch": _num(r.train_s_per_epoch),
            "peak MB/epoch": _num(r.peak_mb_per_epoch),
            "run s": _num(r.seconds),
        }
        for r in runs
    ]
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    return "\n".join(
        [
            f"# reparam study: {task}",
            "",
            *(f"- {k}: {v}" for k, v in config.items()),
            f"- machine: {machine}",
            "",
            *_headline(summary),
            "## Summary (mean ± std over seeds; every metric measured on the deploy form after conversion)",
            "",
            markdown_table(_display(summary, study.shown)),
            "",
            f"![{study.metric} vs deploy latency]({REPORT_FILES['plot']})",
            "",
            "Latency: medians of interleaved rounds (`reparam.bench.latency.compare_latency`), every",
            "variant timed side by side in one process on the first seed's deploy form. All columns,",
            "p10-p90 spreads and stds:",
            f"`{REPORT_FILES['summary']}`; every run: `{REPORT_FILES['runs']}`.",
            "",
            *(["## Notes", "", *(f"- {n}" for n in study.notes), ""] if study.notes else []),
            "## Runs",
            "",
            markdown_table(run_rows),
            "",
        ]
    )


def write_report(
    out: Path,
    task: str,
    study: StudyTask,
    runs: Sequence[RunRecord],
    summary: Sequence[Mapping[str, object]],
    profiles: Mapping[str, VariantProfile],
    config: Mapping[str, object],
) -> dict[str, Path]:
    """Write study.md, runs.csv, summary.csv and study.png into ``out`` (atomically); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {k: out / name for k, name in REPORT_FILES.items()}
    run_rows = [
        {
            "variant": r.variant,
            "seed": r.seed,
            **r.metrics,
            "train s/epoch": r.train_s_per_epoch,
            "peak MB/epoch": r.peak_mb_per_epoch,
            "run s": r.seconds,
        }
        for r in runs
    ]
    # run_study refused an existing report before training unless overwrite=True: replacing is decided.
    write_csv(files["runs"], run_rows, overwrite=True)
    write_csv(files["summary"], summary, overwrite=True)
    if importlib.util.find_spec("matplotlib") is None:  # the core install: tables and CSV only
        files.pop("plot")
        study.notes.append("study.png not drawn: matplotlib is not installed (pip install matplotlib)")
    else:
        with atomic_path(files["plot"], overwrite=True) as tmp:
            _plot(tmp, summary, profiles, study)
    atomic_write_text(_markdown(task, study, runs, summary, config), files["markdown"], overwrite=True)
    return files
