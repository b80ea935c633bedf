"""The study loop: a learning-rate sweep per variant on a validation split, then every (seed, variant) run at
the variant's chosen rate, measured on the test data; progress with ETA, profiles and report.

Fair comparison: each variant gets its own best rate (the sweep trains on the training data minus a held-out
validation split and picks by the validation metric; the test data is never used to choose). Resumable:
every finished run (sweep runs too) is written atomically to ``out/records/`` as it ends, and the same call
again continues where it stopped (the recipe is kept in ``out/recipe.json``; another recipe is refused).
Determinism: ``torch.manual_seed(seed)`` per run, data order from a generator seeded with the run's seed,
``torch.use_deterministic_algorithms`` (warn only on CUDA) and a fixed ``num_threads``; the previous
settings are restored afterwards, so the same seed gives the same numbers in a resumed study.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch

from reparam.bench.latency import Timing
from reparam.checks import strict_bools
from reparam.io import atomic_write_text, check_folder
from reparam.text import Progress, say, text_table

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_LRS",
    "TASKS",
    "PeakMemory",
    "RunRecord",
    "StudyContext",
    "StudyResult",
    "VariantProfile",
    "clock",
    "run_study",
]

TASKS = ("classification", "detection")
DEFAULT_EPOCHS = {"classification": 3, "detection": 30}
DEFAULT_LRS: dict[str, tuple[float, ...]] = {
    "classification": (0.05, 0.1, 0.2, 0.4),
    "detection": (0.01, 0.04),
}
"""Learning rates swept per variant when ``lrs`` is not given. Classification: 0.1 is the plain model's
best and OREPA's best is 0.4 (README, SPEC 8), so the sweep brackets both. Detection (SGD ``lr0``): a
shorter sweep for time, Ultralytics' default 0.01 and 4x it for blocks whose kernel direction moves slower."""


@dataclass
class RunRecord:
    """One trained model: its metrics (measured on the deploy form), training time and memory per epoch,
    its learning rate and phase ("sweep": metrics on the validation split; "test": on the test data; "int8":
    INT8 metrics of that test run's model, no training: time and memory 0 and None)."""

    variant: str
    seed: int
    metrics: dict[str, float]
    train_s_per_epoch: float
    peak_mb_per_epoch: float | None
    seconds: float
    lr: float
    phase: str


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
    sweep: list[RunRecord]
    chosen_lr: dict[str, float]
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
    sweep_epochs: int
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
    paired: tuple[str, ...]
    plot_latency: tuple[str, str | None]
    notes: list[str]
    int8_phase: bool
    """True: with ``int8`` the loop asks ``run(variant, seed, lr, "int8")`` after each test run, a separate
    record that reads what the test run kept (its checkpoint), so INT8 can be added to a finished study."""

    def describe(self) -> dict[str, object]: ...

    def fingerprint(self) -> dict[str, object]: ...

    def run(self, variant: str, seed: int, lr: float, phase: str) -> RunRecord: ...

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


def clock(seconds: float) -> str:
    """Seconds as m:ss or h:mm:ss."""
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


RECIPE_FILE = "recipe.json"
RECORDS_DIR = "records"


class _Ledger:
    """The finished runs of one study in ``out/records/`` (one JSON per run, written atomically as it ends)
    under the recipe kept in ``out/recipe.json``; another recipe in the same folder is refused."""

    def __init__(
        self, out: Path, recipe: dict[str, object], overwrite: bool, report_files: list[str]
    ) -> None:
        self.dir = out / RECORDS_DIR
        kept = out / RECIPE_FILE
        if overwrite:
            for old in (*self.dir.glob("*.json"), kept):
                old.unlink(missing_ok=True)
        elif kept.exists():
            saved = json.loads(kept.read_text())
            differ = sorted(k for k in recipe.keys() | saved.keys() if recipe.get(k) != saved.get(k))
            if differ:
                raise ValueError(
                    f"out={out} holds a study with another recipe (differs in: {', '.join(differ)}); "
                    "use another out= or pass overwrite=True to start again"
                )
        elif report_files:
            raise ValueError(
                f"out={out} already holds a study report ({', '.join(report_files)}); "
                "pass overwrite=True to replace it"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(recipe, indent=1, sort_keys=True), kept, overwrite=True)

    def _path(self, phase: str, variant: str, lr: float, seed: int) -> Path:
        return self.dir / f"{phase}-{variant}-lr{lr!r}-seed{seed}.json"

    def get(self, phase: str, variant: str, lr: float, seed: int) -> RunRecord | None:
        """The recorded run, or None when it has not finished yet."""
        path = self._path(phase, variant, lr, seed)
        return RunRecord(**json.loads(path.read_text())) if path.exists() else None

    def put(self, rec: RunRecord) -> None:
        """Record a finished run (atomic: a stopped study never leaves half a record)."""
        path = self._path(rec.phase, rec.variant, rec.lr, rec.seed)
        atomic_write_text(json.dumps(asdict(rec)), path, overwrite=True)


class _Plan:
    """Runs each planned (phase, variant, lr, seed) once: from the ledger if recorded, else trained now."""

    def __init__(self, study: StudyTask, ledger: _Ledger, total: int, progress: Progress | None) -> None:
        self.study, self.ledger, self.total, self.progress = study, ledger, total, progress
        self.done = self.trained = 0
        self.t0 = time.perf_counter()

    def __call__(self, phase: str, variant: str, lr: float, seed: int) -> RunRecord:
        self.done += 1
        what = f"{'' if phase == 'test' else phase + ' '}{variant} lr {lr:g} seed {seed}"
        rec = self.ledger.get(phase, variant, lr, seed)
        if rec is not None:
            say(self.progress, f"run {self.done}/{self.total}: {what} (recorded, not rerun)")
            return rec
        elapsed = time.perf_counter() - self.t0
        eta = (
            clock(elapsed / self.trained * (self.total - self.done + 1))
            if self.trained
            else "after the first run"
        )
        say(self.progress, f"run {self.done}/{self.total}: {what} (elapsed {clock(elapsed)}, ETA {eta})")
        rec = self.study.run(variant, seed, lr, phase)
        self.ledger.put(rec)
        self.trained += 1
        mem = "n/a" if rec.peak_mb_per_epoch is None else f"{rec.peak_mb_per_epoch:.0f} MB"
        shown = ", ".join(
            f"{m} {v:.4g}" for m, v in rec.metrics.items() if m in self.study.shown or phase != "test"
        )
        cost = (
            f"{rec.seconds:.0f} s"
            if phase == "int8"
            else f"{rec.train_s_per_epoch:.1f} s/epoch, peak +{mem}/epoch"
        )
        say(self.progress, f"  {what}: {shown}; {cost}")
        return rec


def _merged(test: RunRecord, int8: RunRecord) -> RunRecord:
    """The test run with the metrics its INT8 record measured added."""
    return replace(test, metrics={**test.metrics, **int8.metrics})


def _check_args(
    task: str,
    variants: Sequence[str],
    known: Sequence[str],
    seeds: Sequence[int],
    lrs: Sequence[float],
    sweep_seeds: Sequence[int],
    **positive: int,
) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not variants or len(set(variants)) != len(variants):
        raise ValueError(f"variants must name at least one variant, each once, got {list(variants)}")
    unknown = [v for v in variants if v not in known]
    if unknown:
        raise ValueError(f"variants {unknown} are not known for {task}; known: {list(known)}")
    for name, values in (("seeds", seeds), ("sweep_seeds", sweep_seeds)):
        if (
            not values
            or len(set(values)) != len(values)
            or any(not isinstance(s, int) or s < 0 for s in values)
        ):
            raise ValueError(f"{name} must list at least one distinct integer >= 0, got {list(values)}")
    finite = all(isinstance(lr, int | float) and math.isfinite(lr) and lr > 0 for lr in lrs)
    if not lrs or len(set(lrs)) != len(lrs) or not finite:
        raise ValueError(f"lrs must list at least one distinct learning rate > 0, got {list(lrs)}")
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device={device!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: no CUDA GPU is available here; use device=cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device}: the study runs on cpu or cuda")
    return dev


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
    lrs: Sequence[float] | None = None,
    sweep_seeds: Sequence[int] = (0,),
    sweep_epochs: int | None = None,
    device: str = "cpu",
    int8: bool = False,
    overwrite: bool = False,
    num_threads: int = 1,
    recipe: object | None = None,
    progress: Progress | None = None,
) -> StudyResult:
    """Sweep ``lrs`` per variant on a validation split, train every variant with every seed at its chosen
    rate, measure the deploy forms on the test data, write the report.

    ``task``: "classification" (Fashion-MNIST, small CNN family; ``recipe`` a ``ClassificationRecipe``) or
    "detection" (YOLOv8n zoo on the tree-crown data; a ``DetectionRecipe``). ``variants`` default to all of
    the task's, ``lrs`` to :data:`DEFAULT_LRS` (one rate: no sweep). ``sweep_seeds``: seeds of the sweep
    runs; ``sweep_epochs``: their epochs (default ``epochs``; fewer is a shorter sweep, a whole schedule).
    ``num_threads`` defaults to 1: on a shared 2-core CPU two OpenMP threads per process cost 4x the
    CPU time per step (measured 450 vs 102 ms for the small CNN). Writes ``study.md``, ``runs.csv``,
    ``sweep.csv``, ``paired.csv``, ``summary.csv`` and ``study.png`` into ``out`` atomically. Every finished
    run is kept in ``out/records/``: the same call again continues where it stopped; another recipe in the
    same ``out`` is refused unless ``overwrite=True`` (which starts again).
    """
    from reparam.study import report

    known = report.known_variants(task) if task in TASKS else ()
    variants = list(known if variants is None else variants)
    epochs = DEFAULT_EPOCHS.get(task, 1) if epochs is None else epochs
    sweep_epochs = epochs if sweep_epochs is None else sweep_epochs
    lrs = list(DEFAULT_LRS.get(task, (0.1,)) if lrs is None else lrs)
    seeds, sweep_seeds = list(seeds), list(sweep_seeds)
    _check_args(
        task, variants, known, seeds, lrs, sweep_seeds,
        epochs=epochs, sweep_epochs=sweep_epochs, num_threads=num_threads,
    )  # fmt: skip
    sweep_seeds = sweep_seeds if len(lrs) > 1 else []  # one rate: nothing to choose, no sweep
    out = check_folder("out", out, "the study report")
    dev = _check_device(device)
    t_start = time.perf_counter()
    with _controlled(num_threads, dev), tempfile.TemporaryDirectory(prefix="reparam-study-") as tmp:
        ctx = StudyContext(epochs, sweep_epochs, dev, int8, Path(tmp), out, num_threads, progress)
        study = _make_task(task, recipe, ctx)
        fingerprint = {
            "task": task, "epochs": epochs, "lrs": lrs, "sweep_seeds": sweep_seeds,
            "sweep_epochs": sweep_epochs, "device": str(dev), "num_threads": num_threads,
            **study.fingerprint(),
        }  # fmt: skip
        ledger = _Ledger(out, fingerprint, overwrite, report.existing_reports(out))
        int8_runs = len(seeds) if int8 and study.int8_phase else 0
        total = len(variants) * (len(lrs) * len(sweep_seeds) + len(seeds) + int8_runs)
        plan = _Plan(study, ledger, total, progress)
        sweep = [plan("sweep", v, lr, s) for v in variants for lr in lrs for s in sweep_seeds]
        rows = [{"variant": r.variant, "lr": r.lr, "seed": r.seed, **r.metrics} for r in sweep]
        swept = report.sweep_rows(rows, f"val {study.metric}")
        best = {str(r["variant"]): r["chosen lr"] for r in swept}
        chosen = {v: float(str(best[v])) if sweep else lrs[0] for v in variants}
        if sweep:
            say(progress, "chosen rates (best validation " + study.metric + "): "
                + ", ".join(f"{v} {lr:g}" for v, lr in chosen.items()))  # fmt: skip
            for note in report.edge_notes(swept):
                say(progress, f"note: {note}")
        runs = [plan("test", v, chosen[v], s) for s in seeds for v in variants]
        if int8_runs:
            runs = [_merged(r, plan("int8", r.variant, r.lr, r.seed)) for r in runs]
        say(
            progress,
            f"all {total} runs done ({plan.trained} trained now) in {clock(time.perf_counter() - t_start)}",
        )
        say(progress, "profiling the deploy forms (params, FLOPs, side-by-side latency)")
        profiles = study.profile(variants)
    summary = report.summarize(runs, profiles, variants, chosen)
    config = {
        "task": task,
        "variants": variants,
        "seeds": seeds,
        "epochs": epochs,
        "learning rates swept": ", ".join(f"{lr:g}" for lr in lrs)
        + (
            f" (sweep seeds {sweep_seeds}, {sweep_epochs} epochs each, picked by validation {study.metric})"
            if sweep
            else " (no sweep)"
        ),
        "device": str(dev),
        "int8": int8,
        "num_threads": num_threads,
        **study.describe(),
    }
    files = report.write_report(out, task, study, runs, sweep, summary, profiles, config)
    shown = ["variant", "lr", *(c for c in summary[0] if any(c.startswith(m + " mean") for m in study.shown))]
    cells = [{c: f"{r['lr']:g}" if c == "lr" else report.cell(r, c) for c in shown} for r in summary]
    table = text_table(cells, shown)
    say(progress, f"report: {files['markdown']}")
    return StudyResult(
        task, study.metric, runs, sweep, chosen, profiles, summary, files, list(study.notes), table
    )
