"""The report folders of ``reparam demo`` and ``reparam bench``: summary text, Markdown, CSV and PNG.

The commands measure; this module only lays out what they measured (tables from :mod:`reparam.text` and
:mod:`reparam.bench.report`, plots from :mod:`reparam.bench.report`). Each report folder belongs to its
command: a re-run replaces the files the command writes there (each atomically), and nothing else.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reparam.app.train import TrainResult
from reparam.bench.profile import FormProfile, profile_rows
from reparam.bench.report import (
    markdown_table,
    plot_block_errors,
    plot_latency,
    plot_training_curves,
    read_results_csv,
    write_csv,
)
from reparam.io import atomic_path, atomic_write_text
from reparam.text import text_table
from reparam.verification import VerifyReport

__all__ = [
    "BASELINE",
    "CONVERTED",
    "DEPLOYED",
    "DemoReport",
    "summary_rows",
    "write_bench_report",
    "write_demo_report",
]

BASELINE = "training form"
"""The form every latency ratio is relative to."""
CONVERTED = "converted in memory (fp32)"
DEPLOYED = "deploy checkpoint"
"""The demo's forms as its report names them: BASELINE is trained, CONVERTED the same model converted in
memory, DEPLOYED the file ``deploy_checkpoint`` wrote (loaded back)."""

Checks = dict[str, tuple[bool, str]]


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _shown(row: Mapping[str, object]) -> dict[str, str]:
    """A summary row formatted for display: ratios as ``0.82x``, numbers rounded."""
    ratio = f"vs {BASELINE}" in str(row["metric"])
    return {k: f"{v:.2f}x" if ratio and isinstance(v, float) else _fmt(v) for k, v in row.items()}


def summary_rows(
    profiles: Sequence[FormProfile], maps: Mapping[str, Mapping[str, float]], batches: Sequence[int]
) -> list[dict[str, object]]:
    """One row per metric (params, GFLOPs, latency, ratio per batch, throughput, mAP); a column per form."""
    base = profiles[0]
    rows: list[dict[str, object]] = []

    def add(metric: str, values: Sequence[object]) -> None:
        rows.append({"metric": metric, **{p.name: v for p, v in zip(profiles, values, strict=True)}})

    add("params", [p.params for p in profiles])
    add("GFLOPs (batch 1)", [p.gflops for p in profiles])
    for b in batches:
        add(f"latency b{b} median ms", [p.latency[b].median_ms for p in profiles])
        add(
            f"latency b{b} vs {BASELINE}",
            [round(p.latency[b].ratio_to(base.latency[b]), 3) for p in profiles],
        )
    b = batches[-1]
    add(f"throughput b{b} img/s", [1e3 * b / p.latency[b].median_ms for p in profiles])
    for key in ("mAP50", "mAP50-95"):
        add(f"val {key}", [maps.get(p.name, {}).get(key, math.nan) for p in profiles])
    return rows


@dataclass
class DemoReport:
    """Everything the demo measured, as the report folder shows it."""

    folder: Path
    header: str
    rows: list[dict[str, object]]
    profiles: Sequence[FormProfile]
    run: TrainResult
    v32: VerifyReport
    v64: VerifyReport
    maps: Mapping[str, Mapping[str, float]]
    checks: Checks
    deploy_pt: Path
    onnx_path: Path
    seconds: dict[str, float] = field(default_factory=dict)
    int8: list[dict[str, str]] = field(default_factory=list)

    @property
    def check_lines(self) -> list[str]:
        """``[PASS] name: detail`` per check."""
        return [
            f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}" for name, (ok, detail) in self.checks.items()
        ]

    @property
    def text(self) -> str:
        """The printed summary: header, metric table, checks."""
        table = text_table([_shown(r) for r in self.rows])
        return "\n".join([self.header, "", table, "", *self.check_lines])


def _write_demo_tables(r: DemoReport) -> None:
    write_csv(r.folder / "summary.csv", r.rows, overwrite=True)
    write_csv(r.folder / "latency.csv", profile_rows(r.profiles, BASELINE), overwrite=True)
    blocks = [
        {
            "block": a.name,
            "type": a.kind,
            "fp32 max_rel": f"{a.max_rel:.3e}",
            "fp64 max_rel": f"{b.max_rel:.3e}",
        }
        for a, b in zip(r.v32.blocks, r.v64.blocks, strict=True)
    ]
    if blocks:
        write_csv(r.folder / "blocks.csv", blocks, overwrite=True)
    write_csv(r.folder / "validation.csv", [{"form": k, **v} for k, v in r.maps.items()], overwrite=True)
    if r.int8:
        write_csv(r.folder / "int8.csv", r.int8, overwrite=True)
    with atomic_path(r.folder / "results.csv", overwrite=True) as tmp:
        shutil.copyfile(r.run.results_csv, tmp)


def _write_demo_plots(r: DemoReport) -> None:
    curves = read_results_csv(r.run.results_csv)
    plot_training_curves(curves, r.folder / "training_curves.png", overwrite=True)
    plot_latency(r.profiles, r.folder / "latency.png", overwrite=True)
    if r.v32.blocks:
        errors = {
            "fp32": ([b.max_rel for b in r.v32.blocks], r.v32.rtol),
            "fp64": ([b.max_rel for b in r.v64.blocks], r.v64.rtol),
        }
        names = [b.name for b in r.v32.blocks]
        plot_block_errors(names, errors, r.folder / "block_error.png", overwrite=True)


def _int8_section(r: DemoReport) -> list[str]:
    """INT8 rows: mAP (Ultralytics val, rect=False, batch 1), drop and batch-1 latency vs fp32 ONNX."""
    if not r.int8:
        return []
    return [
        "## INT8 (mAP at rect=False; latency batch 1, one thread, medians of interleaved rounds)", "",
        markdown_table(r.int8), "",
    ]  # fmt: skip


def _demo_markdown(r: DemoReport) -> str:
    worst = sorted(r.v32.blocks, key=lambda b: b.max_rel, reverse=True)[:10]
    worst_rows = [
        {"block": b.name, "type": b.kind, "max_abs": f"{b.max_abs:.2e}", "max_rel": f"{b.max_rel:.2e}"}
        for b in worst
    ]
    return "\n".join([
        "# reparam demo report", "", r.header, "", markdown_table([_shown(row) for row in r.rows]), "",
        "## Checks", "", *(f"- {line}" for line in r.check_lines), "",
        f"## Latency (medians of interleaved rounds; ratios to the {BASELINE})", "",
        markdown_table(profile_rows(r.profiles, BASELINE)), "", "![latency](latency.png)", "",
        *_int8_section(r),
        "## Training", "", f"Run folder `{r.run.save_dir}`; checkpoint `{r.run.best}`.",
        f"Deploy checkpoint `{r.deploy_pt}`; ONNX `{r.onnx_path}`.", "",
        "![training curves](training_curves.png)", "",
        "## Conversion error per block (worst 10 of fp32; all rows in blocks.csv)", "",
        markdown_table(worst_rows) if worst_rows else "no re-parameterizable blocks", "",
        "![error per block](block_error.png)", "",
        "## Stage times (s)", "", markdown_table([{k: f"{v:.1f}" for k, v in r.seconds.items()}]), "",
    ])  # fmt: skip


def write_demo_report(report: DemoReport) -> Path:
    """Write the demo's report folder (summary.md/.txt, CSV tables, PNG plots); returns the folder.

    Replaces the files of a previous demo report in that folder, each atomically."""
    report.folder.mkdir(parents=True, exist_ok=True)
    _write_demo_tables(report)
    _write_demo_plots(report)
    atomic_write_text(_demo_markdown(report), report.folder / "summary.md", overwrite=True)
    atomic_write_text(report.text + "\n", report.folder / "summary.txt", overwrite=True)
    return report.folder


def write_bench_report(
    out: Path,
    title: str,
    profiles: Mapping[str, Sequence[FormProfile]],
    train_cost: Sequence[Mapping[str, object]] | None = None,
) -> list[dict[str, object]]:
    """Write bench.md, bench.csv, one latency PNG per model and train_cost.csv (each atomically, replacing
    those of a previous bench report in ``out``); returns bench.csv's rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    sections = ["# reparam bench", "", title, ""]
    for name, model_profiles in profiles.items():
        model_rows = [{"model": name, **r} for r in profile_rows(model_profiles, BASELINE)]
        rows += model_rows
        png = plot_latency(
            model_profiles, out / f"latency_{Path(name).stem}.png", title=Path(name).stem, overwrite=True
        )
        sections += [f"## {name}", "", markdown_table(model_rows), "", f"![latency]({png.name})", ""]
    write_csv(out / "bench.csv", rows, overwrite=True)
    if train_cost is not None:
        write_csv(out / "train_cost.csv", train_cost, overwrite=True)
        sections += ["## Training cost per block type", "", markdown_table(train_cost), ""]
    atomic_write_text("\n".join(sections), out / "bench.md", overwrite=True)
    return rows
