"""``reparam study``: its keys in --help, bad input as one line with exit 2, the options reaching
``run_study``, the missing-data instruction, and a tiny real run through :func:`reparam.app.study`."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import pytest

from reparam.cli import main
from test_study import _recipe


def test_help_lists_every_key(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["study", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for key in (
        "task=",
        "variants=",
        "seeds=",
        "epochs=",
        "int8=",
        "device=",
        "out=",
        "overwrite=",
        "threads=",
    ):
        assert f"\n  {key}" in out, key
    assert "(default classification)" in out and "(default 0,1,2)" in out
    assert "runs/reparam-study/<task>" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["task=segmentation"],
            "bad value for task='segmentation': must be one of classification, detection",
        ),
        (["seeds=0,x"], "bad value for seeds='0,x': must be a comma-separated list of integers >= 0"),
        (
            ["seeds=1,1"],
            "bad value for seeds='1,1': must be a comma-separated list of distinct integers >= 0",
        ),
        (["seeds=-1"], "bad value for seeds='-1': must be a comma-separated list of distinct integers >= 0"),
        (["epochs=0"], "bad value for epochs='0': must be an integer >= 1"),
        (["threads=0"], "bad value for threads='0': must be an integer >= 1"),
        (["variants=plain,nope"], "variants ['nope'] are not known for classification; known: ['plain',"),
        (["task=detection", "variants=dbb,dbb"], "variants must name at least one variant, each once"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message) -> None:
    out = tmp_path / "never"
    try:
        code = main(["study", *args, f"out={out}"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("reparam study: error: ") and message in err, err
    assert not out.exists()


def test_options_reach_run_study(monkeypatch) -> None:
    app_study = importlib.import_module("reparam.app.study")  # the module: reparam.app.study is the function
    seen: dict = {}

    def fake(task, variants, **kw):
        seen.update(kw, task=task, variants=variants)
        raise ValueError("stop here")

    monkeypatch.setattr(app_study, "run_study", fake)
    argv = ["task=detection", "variants=plain,orepa", "seeds=3,1", "epochs=2", "int8=True", "threads=2"]
    assert main(["study", *argv]) == 2
    progress = seen.pop("progress")
    assert callable(progress)
    assert seen == dict(
        task="detection", variants=["plain", "orepa"], seeds=(3, 1), epochs=2,
        out=Path("runs/reparam-study/detection"), device="cpu", int8=True, overwrite=False, num_threads=2,
        recipe=None, lrs=None, sweep_seeds=(0,), sweep_epochs=None,
    )  # fmt: skip


def test_missing_fashion_mnist_names_the_install_command(tmp_path, monkeypatch, capsys) -> None:
    import reparam.data.fashion_mnist as fm

    monkeypatch.setattr(fm, "DEFAULT_ROOT", tmp_path / "none")
    assert main(["study", "variants=plain", "seeds=0", "epochs=1", f"out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"Fashion-MNIST train files not found in {tmp_path / 'none'}" in err
    assert "install them with: apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "out").exists()


def test_tiny_study_through_the_app_prints_the_table_and_writes_the_report(tmp_path) -> None:
    from reparam.app import study

    lines: list[str] = []
    out = tmp_path / "s"
    result = study(
        variants=["plain", "qarepvgg"], seeds=[0], epochs=1, out=out, recipe=_recipe(), progress=lines.append,
        lrs=[0.05],
    )  # fmt: skip
    assert result.files["markdown"] == out / "study.md"
    with (out / "summary.csv").open(newline="") as f:
        assert [r["variant"] for r in csv.DictReader(f)] == ["plain", "qarepvgg"]
    text = "\n".join(lines)
    assert "run 1/2: plain lr 0.05 seed 0" in text and "run 2/2: qarepvgg lr 0.05 seed 0" in text
    assert result.table in text and "classification: top1 of the deploy form, mean ± std over seeds" in text
    assert f"wrote {out / 'study.md'}" in text
    with pytest.raises(
        ValueError, match=r"holds a study with another recipe \(differs in: lrs, sweep_seeds\)"
    ):
        study(variants=["plain"], seeds=[0], epochs=1, out=out, recipe=_recipe())
