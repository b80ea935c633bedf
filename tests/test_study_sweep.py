"""The fair study: the learning-rate sweep picks by validation (never test), every run is recorded and a
stopped study resumes to the same numbers, another recipe in the same folder is refused, the paired
difference interval is Student's t, the report is regenerated from its CSVs, and study/ never imports
the app layer."""

from __future__ import annotations

import ast
import csv
import math
import statistics
from pathlib import Path

import pytest
import torch

import reparam.study.runner as runner
from reparam.bench.latency import Timing
from reparam.cli import main
from reparam.study import RunRecord, VariantProfile, run_study
from reparam.study.report import render_report
from reparam.study.stats import paired_difference, t_quantile
from test_study import _recipe

# Validation top-1 per (variant, lr): the best rate differs per variant. Test top-1 prefers other rates, so a
# sweep that looked at test data would pick differently.
VAL = {"plain": {0.1: 80.0, 0.2: 78.0, 0.4: 70.0}, "orepa": {0.1: 70.0, 0.2: 79.0, 0.4: 81.0}}
TEST = {"plain": {0.1: 60.0, 0.2: 90.0, 0.4: 95.0}, "orepa": {0.1: 99.0, 0.2: 50.0, 0.4: 75.0}}


class FakeTask:
    """A study task with known metrics; counts what it is asked to run; can stop after ``stop_after``."""

    metric = "top1"
    shown = ("top1",)
    paired = ("top1",)
    plot_latency = ("torch b1", None)
    int8_phase = True  # with int8=True: an "int8" record per test run (as detection does)

    def __init__(self, stop_after: int | None = None, tag: str = "a") -> None:
        self.calls: list[tuple[str, str, float, int]] = []
        self.notes: list[str] = []
        self.stop_after, self.tag = stop_after, tag

    def describe(self) -> dict[str, object]:
        return {"data": "fake"}

    def fingerprint(self) -> dict[str, object]:
        return {"data": self.tag}

    def run(self, variant: str, seed: int, lr: float, phase: str) -> RunRecord:
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt  # the session ends mid-study
        self.calls.append((phase, variant, lr, seed))
        if phase == "sweep":
            metrics = {"val top1": VAL[variant][lr] + seed}
        elif phase == "int8":
            metrics = {"top1 int8": TEST[variant][lr] - 1.0 - seed}
        else:
            metrics = {"top1": TEST[variant][lr] + 0.5 * seed * (variant == "orepa")}
        return RunRecord(variant, seed, metrics, 1.0, None, 2.0, lr, phase)

    def profile(self, variants):
        t = Timing("x", 1.0, 0.9, 1.1, 3)
        return {v: VariantProfile(v, 10, 5, 0.1, {"torch b1": t}) for v in variants}


def _fake_study(monkeypatch, tmp_path: Path, task: FakeTask, **kw):
    monkeypatch.setattr(runner, "_make_task", lambda *a: task)
    args = dict(
        variants=["plain", "orepa"], seeds=(0, 1, 2), epochs=1, out=tmp_path / "s", lrs=(0.1, 0.2, 0.4)
    )
    return run_study("classification", **(args | kw))


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_picks_each_variants_rate_by_validation_and_tests_only_there(monkeypatch, tmp_path) -> None:
    task = FakeTask()
    result = _fake_study(monkeypatch, tmp_path, task)
    assert result.chosen_lr == {"plain": 0.1, "orepa": 0.4}  # argmax of VAL, not of TEST
    sweep = [c for c in task.calls if c[0] == "sweep"]
    assert sorted(sweep) == sorted(("sweep", v, lr, 0) for v in VAL for lr in VAL[v])
    tests = [c for c in task.calls if c[0] == "test"]
    assert sorted(tests) == sorted([("test", "plain", 0.1, s) for s in (0, 1, 2)] + [
        ("test", "orepa", 0.4, s) for s in (0, 1, 2)])  # fmt: skip
    rows = _csv(result.files["sweep"])
    assert {(r["variant"], float(r["lr"]), float(r["val top1"])) for r in rows} == {
        (v, lr, m) for v in VAL for lr, m in VAL[v].items()
    }
    md = result.files["markdown"].read_text()
    assert "| plain | 80.00 | 78.00 | 70.00 | 0.1 |" in md and "| orepa | 70.00 | 79.00 | 81.00 | 0.4 |" in md
    assert "- plain: the chosen rate 0.1 is the smallest swept (0.1 .. 0.4); its best rate may lie" in md
    assert "- orepa: the chosen rate 0.4 is the largest swept (0.1 .. 0.4)" in md
    summary = _csv(result.files["summary"])
    assert [(r["variant"], float(r["lr"])) for r in summary] == [("plain", 0.1), ("orepa", 0.4)]


def test_one_rate_means_no_sweep(monkeypatch, tmp_path) -> None:
    task = FakeTask()
    result = _fake_study(monkeypatch, tmp_path, task, lrs=(0.2,))
    assert all(c[0] == "test" and c[2] == 0.2 for c in task.calls) and len(task.calls) == 6
    assert result.sweep == [] and "sweep" not in result.files


def test_a_stopped_study_resumes_where_it_stopped_with_the_same_results(monkeypatch, tmp_path) -> None:
    whole = _fake_study(monkeypatch, tmp_path / "whole", FakeTask())
    stopped = FakeTask(stop_after=7)
    with pytest.raises(KeyboardInterrupt):
        _fake_study(monkeypatch, tmp_path / "parts", stopped)
    assert len(list((tmp_path / "parts" / "s" / "records").glob("*.json"))) == 7  # each run as it ended
    again = FakeTask()
    resumed = _fake_study(monkeypatch, tmp_path / "parts", again)
    assert len(again.calls) == 12 - 7 and not set(again.calls) & set(stopped.calls)
    assert resumed.chosen_lr == whole.chosen_lr
    assert [(r.variant, r.seed, r.lr, r.metrics) for r in resumed.runs] == [
        (r.variant, r.seed, r.lr, r.metrics) for r in whole.runs
    ]
    for name in ("runs", "sweep", "summary", "paired"):
        assert resumed.files[name].read_text() == whole.files[name].read_text(), name
    done = FakeTask()
    _fake_study(monkeypatch, tmp_path / "parts", done)  # a finished study: nothing left to train
    assert done.calls == []


def test_int8_records_join_a_finished_study_without_retraining(monkeypatch, tmp_path) -> None:
    first = FakeTask()
    _fake_study(monkeypatch, tmp_path, first)  # int8=False: no int8 records
    assert {c[0] for c in first.calls} == {"sweep", "test"}
    stopped = FakeTask(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        _fake_study(monkeypatch, tmp_path, stopped, int8=True)  # same recipe: trained runs are reused
    assert [c[0] for c in stopped.calls] == ["int8", "int8"]
    again = FakeTask()
    result = _fake_study(monkeypatch, tmp_path, again, int8=True)
    assert [c[0] for c in again.calls] == ["int8"] * 4 and not set(again.calls) & set(stopped.calls)
    assert len(list((tmp_path / "s" / "records").glob("int8-*.json"))) == 6
    for r in result.runs:
        assert r.metrics == {"top1": r.metrics["top1"], "top1 int8": TEST[r.variant][r.lr] - 1.0 - r.seed}
    assert {row["variant"]: float(row["top1 int8 mean"]) for row in _csv(result.files["summary"])} == {
        "plain": TEST["plain"][0.1] - 2.0,
        "orepa": TEST["orepa"][0.4] - 2.0,
    }


def test_sweep_epochs_reach_the_sweep_runs_only(monkeypatch, tmp_path) -> None:
    import reparam.study.classification as cls

    trained: list[tuple[float, int]] = []
    real = cls.ClassificationStudy._train

    def spy(self, model, seed, lr, epochs):
        trained.append((lr, epochs))
        return real(self, model, seed, lr, epochs)

    monkeypatch.setattr(cls.ClassificationStudy, "_train", spy)
    args = dict(variants=["plain"], seeds=(0,), epochs=2, recipe=_recipe(), lrs=(0.05, 0.2), sweep_epochs=1)
    result = run_study("classification", out=tmp_path / "s", **args)
    assert trained == [(0.05, 1), (0.2, 1), (result.chosen_lr["plain"], 2)]
    assert "1 epochs each" in result.files["markdown"].read_text()
    with pytest.raises(ValueError, match=r"differs in: sweep_epochs"):
        run_study("classification", out=tmp_path / "s", **(args | {"sweep_epochs": 2}))
    with pytest.raises(ValueError, match=r"differs in: int8"):  # classification measures INT8 in its runs
        run_study("classification", out=tmp_path / "s", **(args | {"int8": True}))
    with pytest.raises(ValueError, match="sweep_epochs must be >= 1, got 0"):
        run_study("classification", out=tmp_path / "t", **(args | {"sweep_epochs": 0}))


def test_another_recipe_in_the_same_folder_is_refused_before_any_run(monkeypatch, tmp_path) -> None:
    _fake_study(monkeypatch, tmp_path, FakeTask())
    for kw, differs in (
        ({"epochs": 2}, "epochs, sweep_epochs"),
        ({"lrs": (0.1, 0.2)}, "lrs"),
    ):
        task = FakeTask()
        with pytest.raises(ValueError, match=rf"holds a study with another recipe \(differs in: {differs}\)"):
            _fake_study(monkeypatch, tmp_path, task, **kw)
        assert task.calls == []
    with pytest.raises(ValueError, match=r"differs in: data"):
        _fake_study(monkeypatch, tmp_path, FakeTask(tag="other data"))
    task = FakeTask()
    _fake_study(monkeypatch, tmp_path, task, epochs=2, overwrite=True)  # overwrite starts again
    assert len(task.calls) == 12


def test_paired_difference_is_the_students_t_interval() -> None:
    a, b = [81.2, 80.1, 82.6, 79.9], [80.0, 80.5, 80.9, 79.0]
    d = [x - y for x, y in zip(a, b, strict=True)]
    half = 3.182446305284263 * statistics.stdev(d) / math.sqrt(4)  # t(0.975, df=3), from tables
    mean, lo, hi = paired_difference(a, b)
    assert mean == pytest.approx(statistics.fmean(d), abs=1e-12)
    assert (lo, hi) == pytest.approx((mean - half, mean + half), abs=1e-7)
    assert paired_difference([1.0], [0.5]) == (0.5, None, None)
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 30):
        for p in (0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-7)


def test_paired_table_matches_a_direct_computation(monkeypatch, tmp_path) -> None:
    result = _fake_study(monkeypatch, tmp_path, FakeTask())
    (row,) = _csv(result.files["paired"])
    orepa = [TEST["orepa"][0.4] + 0.5 * s for s in (0, 1, 2)]
    diff = [o - TEST["plain"][0.1] for o in orepa]
    half = 4.302652729911275 * statistics.stdev(diff) / math.sqrt(3)
    assert row["variant"] == "orepa" and row["seeds"] == "3"
    assert float(row["diff mean"]) == pytest.approx(statistics.fmean(diff))
    assert float(row["ci95 low"]) == pytest.approx(statistics.fmean(diff) - half, rel=1e-7)


def test_report_is_regenerated_from_the_csvs_alone(monkeypatch, tmp_path, capsys) -> None:
    result = _fake_study(monkeypatch, tmp_path, FakeTask())
    folder = tmp_path / "copy"
    folder.mkdir()
    for key in ("runs", "sweep", "summary", "meta"):
        (folder / result.files[key].name).write_bytes(result.files[key].read_bytes())
    text = render_report(folder)
    assert text == result.files["markdown"].read_text().replace(str(tmp_path / "s"), str(folder))
    assert main(["study", "report=True", f"out={folder}"]) == 0
    assert (folder / "study.md").read_text() == text and text in capsys.readouterr().out
    with pytest.raises(ValueError, match="holds no study"):
        render_report(tmp_path)


def test_real_study_resumes_with_identical_numbers(tmp_path) -> None:
    args = dict(variants=["plain", "orepa"], epochs=1, recipe=_recipe(), lrs=(0.05, 0.2))
    first = run_study("classification", seeds=(0,), out=tmp_path / "a", **args)
    lines: list[str] = []
    more = run_study("classification", seeds=(0, 1), out=tmp_path / "a", progress=lines.append, **args)
    fresh = run_study("classification", seeds=(0, 1), out=tmp_path / "b", **args)
    assert sum("(recorded, not rerun)" in line for line in lines) == len(first.sweep) + len(first.runs)
    assert [(r.variant, r.seed, r.lr, r.metrics) for r in more.runs] == [
        (r.variant, r.seed, r.lr, r.metrics) for r in fresh.runs
    ]
    assert more.chosen_lr == fresh.chosen_lr


def test_study_never_imports_the_app_layer() -> None:
    import reparam.study

    for path in Path(reparam.study.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.startswith(("reparam.app", "reparam.cli"))], path.name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lrs=0.1,x"], "bad value for lrs='0.1,x': must be a comma-separated list of learning rates > 0"),
        (["lrs=0.1,0"], "must be a comma-separated list of distinct learning rates > 0"),
        (["sweep_seeds=1,1"], "bad value for sweep_seeds='1,1'"),
    ],
)
def test_bad_rates_exit_2_with_one_line(tmp_path, capsys, args, message) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["study", *args, f"out={tmp_path / 'never'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_out_that_is_a_file_and_cuda_without_gpu_are_one_line_errors(tmp_path, capsys) -> None:
    f = tmp_path / "report.txt"
    f.write_text("mine")
    assert main(["study", "variants=plain", "seeds=0", "epochs=1", f"out={f}"]) == 2
    err = capsys.readouterr().err
    assert err == f"reparam study: error: out={f} is a file, expected a folder for the study report\n"
    assert f.read_text() == "mine"
    if not torch.cuda.is_available():
        out = tmp_path / "gpu"
        assert main(["study", "variants=plain", "seeds=0", "device=cuda", f"out={out}"]) == 2
        err = capsys.readouterr().err
        assert err == "reparam study: error: device=cuda: no CUDA GPU is available here; use device=cpu\n"
        assert not out.exists()


def test_help_names_the_sweep_keys(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    out = capsys.readouterr().out
    for key in ("lrs=", "sweep_seeds=", "sweep_epochs=", "report="):
        assert f"\n  {key}" in out, key
