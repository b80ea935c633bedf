"""``reparam study``: the same recipe for the plain model and each re-param variant, several seeds each.

A thin layer over :func:`reparam.study.run_study`: picks the default output folder per task, reports
progress and prints the summary table, the notes and the files written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reparam.checks import strict_bools
from reparam.study import StudyResult, run_study
from reparam.study.report import rewrite_markdown
from reparam.text import Progress, say

__all__ = ["DEFAULT_STUDY_ROOT", "study"]

DEFAULT_STUDY_ROOT = Path("runs/reparam-study")
"""``out`` defaults to ``DEFAULT_STUDY_ROOT / task``."""


@strict_bools
def study(
    task: str = "classification",
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    *,
    lrs: Sequence[float] | None = None,
    sweep_seeds: Sequence[int] = (0,),
    sweep_epochs: int | None = None,
    int8: bool = False,
    device: str = "cpu",
    out: str | Path | None = None,
    overwrite: bool = False,
    threads: int = 1,
    recipe: object | None = None,
    report: bool = False,
    progress: Progress | None = None,
) -> StudyResult | str:
    """Run the study of ``task`` (all its variants unless ``variants`` names some) and report it.

    Bad arguments (task, variants, seeds, rates, another recipe in ``out``, missing Fashion-MNIST files)
    raise ValueError / FileNotFoundError naming them before any training starts. ``report=True`` trains
    nothing: it rewrites ``out/study.md`` from the CSVs there, prints it and returns its text.
    """
    out = DEFAULT_STUDY_ROOT / task if out is None else Path(out)
    if report:
        text = rewrite_markdown(out)
        say(progress, text)
        return text
    result = run_study(
        task,
        None if variants is None else list(variants),
        seeds=tuple(seeds),
        epochs=epochs,
        out=out,
        lrs=None if lrs is None else list(lrs),
        sweep_seeds=tuple(sweep_seeds),
        sweep_epochs=sweep_epochs,
        device=device,
        int8=int8,
        overwrite=overwrite,
        num_threads=threads,
        recipe=recipe,
        progress=progress,
    )
    say(
        progress,
        f"\n{result.task}: {result.metric} of the deploy form, mean ± std over seeds\n{result.table}",
    )
    for note in result.notes:
        say(progress, f"note: {note}")
    say(progress, "wrote " + ", ".join(str(p) for p in result.files.values()))
    return result
