"""The study loop: every (seed, variant) run under one recipe, progress with ETA, then profiles and report.

Runs go seed by seed, every variant within a seed, so the ETA (mean time per run so far) is right after the
first round and a stopped study still holds complete seeds. Determinism: ``torch.manual_seed(seed)`` per
run, data order from a generator seeded with the run's seed, ``torch.use_deterministic_algorithms`` (warn
only on CUDA) and a fixed ``num_threads``; the previous settings are restored afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from reparam.bench.latency import Timing
from reparam.checks import strict_bools
from reparam.text import Progress, say, text_table

__all__ = [
    "DEFAULT_EPOCHS",
    "TASKS",
    "PeakMemory",
    "RunRecord",
    "StudyContext",
    "StudyResult",
    "VariantProfile",
    "run_study",
]

TASKS = ("classification", "detection")
DEFAULT_EPOCHS = {"classification": 3, "detection": 10}


@dataclass
class RunRecord:
    """One trained model: its metrics (measured on the deploy form), training time and memory per epoch."""

    variant: str
    seed: int
    metrics: dict[str, float]
    train_s_per_epoch: float
    peak_mb_per_epoch: float | None
    seconds: float


@dataclass
class VariantProfile:
    """Deployment cost of one variant's deploy form: parameters, GFLOPs at batch 1, latency per setting."""

    variant: str
    params_train: int
    params_deploy: int
    gflops: float
    latency: dict[str, Timing] = field(default_factory=dict)


@dataclass
class StudyResult:
    """Outcome of :func:`run_study`: every run, the per-variant profiles and summary, the files written."""

    task: str
    metric: str
    runs: list[RunRecord]
    profiles: dict[str, VariantProfile]
    summary: list[dict[str, object]]
    files: dict[str, Path]
    notes: list[str]
    table: str


@strict_bools
@dataclass
class StudyContext:
    """What every task gets from :func:`run_study` besides its recipe."""

    epochs: int
    device: torch.device
    int8: bool
    workdir: Path
    out: Path
    num_threads: int
    progress: Progress | None


class StudyTask(Protocol):
    """What a task (classification, detection) provides to the study loop."""

    metric: str
    shown: tuple[str, ...]
    plot_latency: tuple[str, str | None]
    notes: list[str]

    def describe(self) -> dict[str, object]: ...

    def run(self, variant: str, seed: int) -> RunRecord: ...

    def profile(self, variants: Sequence[str]) -> dict[str, VariantProfile]: ...


class PeakMemory:
    """Peak memory one stretch of work adds over its start, in MB.

    CPU: freed heap pages go back to the OS first (glibc ``malloc_trim``), the kernel's peak-RSS mark is
    reset (``/proc/self/clear_refs``), and the result is peak RSS (``VmHWM``) minus RSS at the start.
    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at the start. ``method`` says which;
    it is None where neither works (then :meth:`stop` returns None and the report says so).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._base = 0.0
        self._trim = None
        if device.type == "cuda":
            self.method: str | None = "CUDA max_memory_allocated minus allocated at the epoch's start"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
            self.method = "peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS at the epoch's start"
        except OSError:
            self.method = None

    @staticmethod
    def _status_mb(name: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError(f"/proc/self/status has no {name} field")

    def start(self) -> None:
        """Mark the start of the measured stretch."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
        elif self.method is not None:
            self._trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self._base = self._status_mb("VmRSS")

    def stop(self) -> float | None:
        """Peak MB added since :meth:`start` (None when no method is available)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self._base
        if self.method is None:
            return None
        return self._status_mb("VmHWM") - self._base


@contextlib.contextmanager
def _controlled(num_threads: int, device: torch.device) -> Iterator[None]:
    """Fixed thread count and deterministic algorithms for the study; previous settings restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _run_all(
    study: StudyTask, variants: Sequence[str], seeds: Sequence[int], progress: Progress | None
) -> list[RunRecord]:
    plan = [(v, s) for s in seeds for v in variants]
    t0 = time.perf_counter()
    runs: list[RunRecord] = []
    for i, (variant, seed) in enumerate(plan, 1):
        elapsed = time.perf_counter() - t0
        eta = _clock(elapsed / (i - 1) * (len(plan) - i + 1)) if i > 1 else "after the first run"
        say(progress, f"run {i}/{len(plan)}: {variant} seed {seed} (elapsed {_clock(elapsed)}, ETA {eta})")
        rec = study.run(variant, seed)
        runs.append(rec)
        mem = "n/a" if rec.peak_mb_per_epoch is None else f"{rec.peak_mb_per_epoch:.0f} MB"
        shown = ", ".join(f"{m} {rec.metrics[m]:.4g}" for m in study.shown if m in rec.metrics)
        say(
            progress,
            f"  {variant} seed {seed}: {shown}; {rec.train_s_per_epoch:.1f} s/epoch, peak +{mem}/epoch",
        )
    say(progress, f"all {len(plan)} runs done in {_clock(time.perf_counter() - t0)}")
    return runs


def _check_args(
    task: str, variants: Sequence[str], known: Sequence[str], seeds: Sequence[int], **positive: int
) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not variants or len(set(variants)) != len(variants):
        raise ValueError(f"variants must name at least one variant, each once, got {list(variants)}")
    unknown = [v for v in variants if v not in known]
    if unknown:
        raise ValueError(f"variants {unknown} are not known for {task}; known: {list(known)}")
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must list at least one distinct integer >= 0, got {list(seeds)}")
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _make_task(task: str, recipe: object | None, ctx: StudyContext) -> StudyTask:
    from reparam.study.classification import ClassificationRecipe, ClassificationStudy
    from reparam.study.detection import DetectionRecipe, DetectionStudy

    kind, study = {
        "classification": (ClassificationRecipe, ClassificationStudy),
        "detection": (DetectionRecipe, DetectionStudy),
    }[task]
    recipe = kind() if recipe is None else recipe
    if not isinstance(recipe, kind):
        raise ValueError(f"recipe for task {task!r} must be a {kind.__name__}, got {type(recipe).__name__}")
    return study(recipe, ctx)


@strict_bools
def run_study(
    task: str,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    *,
    out: str | Path,
    device: str = "cpu",
    int8: bool = False,
    overwrite: bool = False,
    num_threads: int = 1,
    recipe: object | None = None,
    progress: Progress | None = None,
) -> StudyResult:
    """Train every variant with every seed under one recipe, measure the deploy forms, write the report.

    ``task``: "classification" (Fashion-MNIST, small CNN family; ``recipe`` a ``ClassificationRecipe``) or
    "detection" (YOLOv8n zoo on the tree-crown data; a ``DetectionRecipe``). ``variants`` default to all of
    the task's. ``num_threads`` defaults to 1: on a shared 2-core CPU two OpenMP threads per process cost
    4x the CPU time per step (measured 450 vs 102 ms for the small CNN). Writes ``study.md``, ``runs.csv``,
    ``summary.csv`` and ``study.png`` into ``out`` atomically; an existing report there is kept unless
    ``overwrite=True``.
    """
    from reparam.study import report

    known = report.known_variants(task) if task in TASKS else ()
    variants = list(known if variants is None else variants)
    epochs = DEFAULT_EPOCHS.get(task, 1) if epochs is None else epochs
    _check_args(task, variants, known, list(seeds), epochs=epochs, num_threads=num_threads)
    out = Path(out)
    existing = report.existing_reports(out)
    if existing and not overwrite:
        raise ValueError(
            f"out={out} already holds a study report ({', '.join(existing)}); "
            "pass overwrite=True to replace it"
        )
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device={device!r} is not a torch device ({e})") from None
    with _controlled(num_threads, dev), tempfile.TemporaryDirectory(prefix="reparam-study-") as tmp:
        ctx = StudyContext(epochs, dev, int8, Path(tmp), out, num_threads, progress)
        study = _make_task(task, recipe, ctx)
        runs = _run_all(study, variants, list(seeds), progress)
        say(progress, "profiling the deploy forms (params, FLOPs, side-by-side latency)")
        profiles = study.profile(variants)
    summary = report.summarize(runs, profiles, variants)
    config = {
        "task": task,
        "variants": variants,
        "seeds": list(seeds),
        "epochs": epochs,
        "device": str(dev),
        "int8": int8,
        "num_threads": num_threads,
        **study.describe(),
    }
    files = report.write_report(out, task, study, runs, summary, profiles, config)
    shown = ["variant", *(c for c in summary[0] if any(c.startswith(m + " mean") for m in study.shown))]
    table = text_table([{c: report.cell(r, c) for c in shown} for r in summary], shown)
    say(progress, f"report: {files['markdown']}")
    return StudyResult(task, study.metric, runs, profiles, summary, files, list(study.notes), table)
