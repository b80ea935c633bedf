"""The core install (torch + numpy, no extras): every command that needs an extra answers in one line with
exit 2, and the classification study runs. A subprocess whose import system refuses the extras' modules
stands in for a venv without them (the real core venv was checked by hand: see the README's install section).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reparam.extras import EXTRA_OF

# Commands and the extra whose module each needs first. A .pt path that exists but is empty: commands must
# stop at the missing extra, before reading it.
COMMANDS = {
    "demo epochs=1": "yolo",
    "train model=yolov8n-orepa.yaml": "yolo",
    "train model=yolov8n-orepa.yaml lr0=0.01": "yolo",
    "deploy {pt}": "yolo",
    "verify yolov8n-orepa.yaml": "yolo",
    "export yolov8n-orepa.yaml": "yolo",
    "info yolov8n-orepa.yaml": "yolo",
    "bench": "yolo",
    "adopt {pt} to=orepa": "yolo",
    "study task=detection": "yolo",
    "data": "yolo",
    "study task=classification int8=True": "export",
}

_BLOCKED_RUN = """
import contextlib, io, json, sys

# None in sys.modules: `import yaml` raises ModuleNotFoundError and importlib.util.find_spec answers None,
# as in a venv without the extras
BLOCKED = set(json.loads(sys.argv[1]))
sys.modules.update(dict.fromkeys(BLOCKED))
"""


def _run_blocked(body: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = _BLOCKED_RUN + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code, json.dumps(sorted(EXTRA_OF)), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_every_command_that_needs_an_extra_says_so_in_one_line_with_exit_2(tmp_path: Path) -> None:
    pt = tmp_path / "x.pt"
    pt.write_bytes(b"")
    argvs = [c.format(pt=pt).split() for c in COMMANDS]
    proc = _run_blocked(
        """
        from reparam.cli import main
        results = []
        for argv in json.loads(sys.argv[2]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main(argv)
            results.append((rc, err.getvalue()))
        assert not [m for m, v in sys.modules.items() if v is not None and m.partition(".")[0] in BLOCKED]
        print(json.dumps(results))
        """,
        json.dumps(argvs),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (command, extra), (rc, err) in zip(COMMANDS.items(), results, strict=True):
        name = command.split()[0]
        assert rc == 2, (command, err)
        assert err.count("\n") == 1 and err.startswith(
            f'reparam {name}: error: needs the {extra} extra: pip install "reparam[{extra}]"'
        ), (command, err)
    assert list(tmp_path.iterdir()) == [pt]  # nothing written


def test_the_app_package_imports_no_extra(tmp_path: Path) -> None:
    proc = _run_blocked(
        """
        import reparam.app, reparam.cli, reparam.data, reparam.bench.report, reparam.study
        print(sorted(m for m in sys.modules if m.startswith("reparam.yolo")))
        """,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_classification_study_runs_without_extras_and_notes_the_missing_plot(tmp_path: Path) -> None:
    proc = _run_blocked(
        """
        import torch
        from reparam.app.study import study
        from reparam.study import ClassificationRecipe, ImageSplits

        g = torch.Generator().manual_seed(0)
        images = lambda n: torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        labels = lambda n: torch.arange(n) % 10
        data = ImageSplits(images(64), labels(64), images(32), labels(32))
        recipe = ClassificationRecipe(
            width=4, batch=16, calib_images=16, latency_batches=(1,), latency_rounds=2, dataset=data
        )
        out = sys.argv[2]
        result = study(variants=["plain"], seeds=[0], epochs=1, out=out, recipe=recipe, progress=print)
        print(json.dumps(sorted(result.files)))
        """,
        str(tmp_path / "study"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "note: study.png not drawn: matplotlib is not installed (pip install matplotlib)" in lines
    assert json.loads(lines[-1]) == ["markdown", "meta", "runs", "summary", "sweep"]
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == [
        "recipe.json", "records", "report.json", "runs.csv", "study.md", "summary.csv", "sweep.csv"
    ]  # fmt: skip
