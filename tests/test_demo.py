"""``reparam demo`` end to end on a tiny generated dataset: 1 epoch at 64 px, report folder and checks."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from reparam.cli import main
from reparam.data.synthetic import make_synthetic_dataset

REPORT_FILES = {
    "summary.md",
    "summary.txt",
    "summary.csv",
    "latency.csv",
    "blocks.csv",
    "validation.csv",
    "results.csv",
    "training_curves.png",
    "latency.png",
    "block_error.png",
}


@pytest.mark.slow
def test_demo_end_to_end_on_the_synthetic_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64)
    out = tmp_path / "demo"
    argv = [
        "demo",
        f"data={data}",
        "epochs=1",
        "imgsz=64",
        "batch=4",
        f"out={out}",
        "rounds=2",
        "throughput_batch=2",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = out / "report"
    assert REPORT_FILES.issubset(p.name for p in report.iterdir())
    assert all((report / name).stat().st_size > 0 for name in REPORT_FILES)
    summary = (report / "summary.txt").read_text()
    assert "[PASS] deploy mAP matches training form" in summary
    assert "[PASS] converted (fp32) mAP matches training form" in summary
    assert "[PASS] verify fp64 (per block + end to end)" in summary
    assert "[PASS] ONNX in onnxruntime matches PyTorch" in summary
    assert "[PASS] ONNX op types/counts identical to plain" in summary
    assert "FAIL" not in summary
    assert summary.strip() in printed
    for step in range(1, 10):
        assert f"[{step}/9]" in printed
    with (report / "summary.csv").open() as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert set(next(iter(rows.values()))) == {
        "metric",
        "training form",
        "deploy checkpoint",
        "plain yolov8n.yaml",
    }
    # conversion keeps the function and removes the branches: converted params equal the plain model's
    assert rows["params"]["deploy checkpoint"] == rows["params"]["plain yolov8n.yaml"]
    assert rows["params"]["deploy checkpoint"] != rows["params"]["training form"]
    with (report / "validation.csv").open() as f:
        forms = [r["form"] for r in csv.DictReader(f)]
    assert forms == ["training form", "converted in memory (fp32)", "deploy checkpoint"]
    assert sorted(p.name for p in out.iterdir()) == ["deploy", "report", "train"]  # no empty val-* folders
    with (report / "blocks.csv").open() as f:
        blocks = list(csv.DictReader(f))
    assert blocks and all(float(b["fp64 max_rel"]) <= 1e-10 for b in blocks)
    assert (out / "deploy" / "yolov8n-orepa-deploy.onnx").is_file()
    assert "![latency](latency.png)" in (report / "summary.md").read_text()
    with (report / "int8.csv").open() as f:
        int8 = {r["form"]: r for r in csv.DictReader(f)}
    assert {"fp32 ONNX (onnxruntime)", "INT8 ONNX (onnxruntime)"} <= set(int8)
    assert float(int8["INT8 ONNX (onnxruntime)"]["ms (batch 1)"]) > 0
    assert "## INT8" in (report / "summary.md").read_text()
