"""What the product prints is true: the deploy note of a model that keeps reparam modules, adopt's answer
for a model that already holds reparam blocks, the legend of the block-error plot."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

import reparam.yolo  # noqa: F401  (registers the blocks)
from reparam.bench.report import new_figure, plot_block_errors
from reparam.yolo import deploy_checkpoint
from reparam.yolo.adopt import select_rows


def _checkpoint(tmp_path: Path, cfg: str) -> Path:
    src = tmp_path / "train.pt"
    torch.save({"model": DetectionModel(cfg, nc=2, verbose=False), "train_args": {}}, src)
    return src


@pytest.mark.slow
def test_a_dynamicconv_deploy_checkpoint_says_loading_needs_reparam_and_that_is_true(tmp_path: Path) -> None:
    src = _checkpoint(tmp_path, "yolov8n-c2f-dynamicconv.yaml")
    with pytest.raises(ValueError, match="no stock Ultralytics/PyTorch deploy form"):
        deploy_checkpoint(src, tmp_path / "refused.pt")
    with pytest.warns(UserWarning) as caught:
        dst = deploy_checkpoint(src, tmp_path / "deploy.pt", standalone=False)
    note = str(caught[0].message)
    assert "need no reparam" not in note
    assert "loading it (YOLO(path), predict, val, export) needs reparam installed" in note
    assert "fine-tuning, which rebuilds the model from its YAML, `import reparam.yolo` first" in note
    # the note is true: with reparam hidden the file does not load; installed (not imported), it predicts
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from ultralytics import YOLO
        sys.modules["reparam"] = None
        try:
            YOLO({str(dst)!r})
            sys.exit("loaded without reparam")
        except ModuleNotFoundError as e:
            assert e.name.startswith("reparam"), e
        del sys.modules["reparam"]
        YOLO({str(dst)!r}).predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)
        print(sorted(m for m in sys.modules if m.startswith("reparam.yolo")))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_adopt_zoo_on_a_model_that_holds_orepa_says_so_and_what_all3x3_would_do() -> None:
    model = DetectionModel("yolov8n-orepa.yaml", nc=2, verbose=False)
    rows = model.yaml["backbone"] + model.yaml["head"]
    held = [i for i, r in enumerate(rows) if r[2] == "OREPA"]
    left = [i for i, r in enumerate(rows) if r[2] == "Conv" and r[3][1] == 3]
    with pytest.raises(ValueError) as e:
        select_rows(model, "orepa", "zoo")
    msg = str(e.value)
    assert f"the model's rows {held} are reparam blocks already (it already holds OREPA blocks)" in msg
    assert f"where='all3x3' would replace its {len(left)} remaining 3x3 Conv rows {left} by OREPA" in msg
    assert select_rows(model, "orepa", "all3x3") == (left, None)
    # a stock model still gets the zoo rows
    assert select_rows(DetectionModel("yolov8n.yaml", nc=2, verbose=False), "orepa", "zoo")[0] == held


def test_block_error_legend_sits_beside_the_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import reparam.bench.report as report

    figures = []

    def keep(w: float, h: float):
        figures.append(new_figure(w, h))
        return figures[-1]

    monkeypatch.setattr(report, "new_figure", keep)
    names = [f"model.{i}" for i in range(12)]
    plot_block_errors(names, {"fp32": ([1e-7] * 12, 1e-4), "fp64": ([1e-15] * 12, 1e-10)}, tmp_path / "b.png")
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # right of the axes: it covers no bar
    assert (tmp_path / "b.png").stat().st_size > 0
