"""The study machinery on a tiny generated data set: report files and rows, determinism per seed, refusal of a
foreign report, argument checks; the small CNN family's deploy forms (exact parameter counts, equivalence).
The sweep, resume and paired differences: test_study_sweep.py."""

from __future__ import annotations

import csv
import re

import pytest
import torch

from reparam.convert import randomize_bn_, reparameterize
from reparam.models.small_cnn import SMALL_CNN_BLOCKS, small_cnn
from reparam.study import ClassificationRecipe, DetectionRecipe, ImageSplits, run_study


def _tiny() -> ImageSplits:
    """64 train / 32 test 28x28 images whose class sets the brightness of one of ten horizontal bands."""
    g = torch.Generator().manual_seed(7)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
        for i, c in enumerate(y.tolist()):
            x[i, 2 * c + 4 : 2 * c + 7] = 220
        return x, y

    (x, y), (tx, ty) = split(64), split(32)
    return ImageSplits(x, y, tx, ty, 10, "tiny bands")


def _recipe(**kw) -> ClassificationRecipe:
    args = dict(width=4, batch=16, calib_images=16, latency_batches=(1,), latency_rounds=3, dataset=_tiny())
    return ClassificationRecipe(**(args | kw))


def _study(tmp_path, **kw):
    args = dict(
        variants=["plain", "repvgg"],
        seeds=(0, 1),
        epochs=1,
        out=tmp_path / "study",
        recipe=_recipe(),
        lrs=(0.05,),
    )
    return run_study("classification", **(args | kw))


def _csv(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_study_writes_table_csv_and_plot_with_the_right_rows(tmp_path) -> None:
    lines: list[str] = []
    result = _study(tmp_path, progress=lines.append)
    out = tmp_path / "study"
    runs = _csv(out / "runs.csv")
    assert [(r["variant"], r["seed"], r["lr"]) for r in runs] == [
        ("plain", "0", "0.05"),
        ("repvgg", "0", "0.05"),
        ("plain", "1", "0.05"),
        ("repvgg", "1", "0.05"),
    ]
    assert all(0.0 <= float(r["top1"]) <= 100.0 and r["top1"] == r["top1 train form"] for r in runs)
    summary = _csv(out / "summary.csv")
    assert [r["variant"] for r in summary] == ["plain", "repvgg"] and {r["seeds"] for r in summary} == {"2"}
    assert summary[0]["params deploy"] == summary[1]["params deploy"]  # converted RepVGG == plain exactly
    assert int(summary[1]["params train"]) > int(summary[1]["params deploy"])
    for r in summary:
        tops = [float(x["top1"]) for x in runs if x["variant"] == r["variant"]]
        assert float(r["top1 mean"]) == pytest.approx(sum(tops) / 2)
        assert float(r["top1 std"]) == pytest.approx(abs(tops[0] - tops[1]) / 2**0.5)
        assert float(r["torch b1 ms"]) > 0 and float(r["GFLOPs deploy"]) > 0
    md = (out / "study.md").read_text()
    assert re.search(r"^\| plain \| 0.05 \| 2 \| [\d.]+ ± [\d.]+ \|", md, re.M)
    assert re.search(r"^\| repvgg \| 0.05 \| 2 \| [\d.]+ ± [\d.]+ \|", md, re.M)
    assert md.count("\n| repvgg | ") == 4  # summary row, paired difference row, two run rows
    assert "![top1 vs deploy latency](study.png)" in md
    png = (out / "study.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert sorted(p.name for p in out.iterdir()) == [
        "paired.csv", "recipe.json", "records", "report.json", "runs.csv", "study.md", "study.png",
        "summary.csv",
    ]  # fmt: skip
    assert len(list((out / "records").glob("test-*.json"))) == 4
    started = [line for line in lines if line.startswith("run ")]
    assert started[0] == "run 1/4: plain lr 0.05 seed 0 (elapsed 0:00, ETA after the first run)"
    for i, (v, seed) in enumerate([("repvgg", 0), ("plain", 1), ("repvgg", 1)], 2):
        pattern = rf"run {i}/4: {v} lr 0.05 seed {seed} \(elapsed \d+:\d\d, ETA \d+:\d\d\)"
        assert re.fullmatch(pattern, started[i - 1])
    assert len(started) == 4
    assert result.files["plot"] == out / "study.png" and "repvgg" in result.table


def test_same_seed_gives_the_same_metric_and_another_seed_does_not(tmp_path) -> None:
    a = _study(tmp_path / "a", variants=["orepa"], seeds=(3,))
    b = _study(tmp_path / "b", variants=["orepa"], seeds=(3,))
    c = _study(tmp_path / "c", variants=["orepa"], seeds=(4,))
    assert a.runs[0].metrics == b.runs[0].metrics  # bitwise: top-1 and the conversion error of the logits
    assert a.runs[0].metrics["deploy max_rel"] != c.runs[0].metrics["deploy max_rel"]


@pytest.mark.slow
def test_int8_study_reports_the_repvgg_vs_qarepvgg_headline_and_ort_latency(tmp_path) -> None:
    result = _study(tmp_path, variants=["repvgg", "qarepvgg"], seeds=(0,), int8=True)
    runs = _csv(result.files["runs"])
    for r in runs:
        assert float(r["int8 drop"]) == pytest.approx(float(r["top1 ort fp32"]) - float(r["top1 int8"]))
        per_tensor = float(r["top1 ort fp32"]) - float(r["top1 int8 per-tensor"])
        assert float(r["int8 per-tensor drop"]) == pytest.approx(per_tensor)
        assert float(r["top1 ort fp32"]) == pytest.approx(float(r["top1"]), abs=100 / 32)  # at most one image
        assert 0.9 < float(r["int8 cosine"]) <= 1.0
    summary = _csv(result.files["summary"])
    for r in summary:
        speedup = float(r["ort fp32 b1 ms"]) / float(r["ort int8 b1 ms"])
        assert float(r["int8 speedup b1"]) == pytest.approx(speedup)
    md = result.files["markdown"].read_text()
    head = md[md.index("## Headline: RepVGG vs QARepVGG") : md.index("## Summary")]
    assert "| variant | top1 | top1 int8 | int8 drop | top1 int8 per-tensor | int8 per-tensor drop |" in head
    assert "\n| repvgg | " in head and "\n| qarepvgg | " in head and "| plain |" not in head


def test_foreign_report_is_kept_unless_overwrite(tmp_path) -> None:
    out = tmp_path / "study"
    out.mkdir()
    (out / "summary.csv").write_text("mine\n")
    with pytest.raises(
        ValueError, match=r"already holds a study report \(summary.csv\); pass overwrite=True"
    ):
        _study(tmp_path, variants=["plain"], seeds=(0,))
    assert (out / "summary.csv").read_text() == "mine\n"
    result = _study(tmp_path, variants=["plain"], seeds=(0,), overwrite=True)
    assert _csv(result.files["summary"])[0]["variant"] == "plain"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"variants": ["plain", "resnet"]}, r"variants \['resnet'\] are not known for classification"),
        ({"variants": []}, "variants must name at least one variant"),
        ({"seeds": ()}, "seeds must list at least one distinct integer"),
        ({"seeds": (1, 1)}, "seeds must list at least one distinct integer"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"num_threads": 0}, "num_threads must be >= 1"),
        ({"lrs": (0.1, -1.0)}, "lrs must list at least one distinct learning rate > 0"),
        ({"lrs": (0.1, 0.1)}, "lrs must list at least one distinct learning rate > 0"),
        ({"lrs": (0.1, 0.2), "sweep_seeds": ()}, "sweep_seeds must list at least one distinct integer"),
        ({"recipe": DetectionRecipe()}, "must be a ClassificationRecipe"),
        ({"device": "gpu7"}, "device='gpu7' is not a torch device"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        _study(tmp_path, **kw)
    assert not (tmp_path / "study" / "study.md").exists()


def test_recipes_check_their_fields() -> None:
    with pytest.raises(ValueError, match=r"recipe.batch must be >= 1, got 0"):
        ClassificationRecipe(batch=0)
    with pytest.raises(ValueError, match=r"recipe.latency_batches must list sizes >= 1"):
        ClassificationRecipe(latency_batches=())
    with pytest.raises(ValueError, match=r"recipe.imgsz must be >= 1"):
        DetectionRecipe(imgsz=0)
    with pytest.raises(ValueError, match=r"recipe.val_fraction must lie in \(0, 1\)"):
        ClassificationRecipe(val_fraction=1.0)


def test_unknown_task_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"task must be one of \('classification', 'detection'\)"):
        run_study("segmentation", out=tmp_path)


def test_image_splits_check_shapes_and_labels() -> None:
    x = torch.zeros(4, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="train images"):
        ImageSplits(x, torch.zeros(3, dtype=torch.long), x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="test labels must lie in 0..9"):
        ImageSplits(x, torch.zeros(4, dtype=torch.long), x, torch.full((4,), 10))


@pytest.mark.parametrize("variant", [v for v in SMALL_CNN_BLOCKS if v not in ("plain", "dynamic")])
def test_small_cnn_reparam_variants_deploy_to_plain_exactly(variant: str) -> None:
    plain = reparameterize(small_cnn("plain", width=8).eval())
    torch.manual_seed(0)
    model = small_cnn(variant, width=8).eval().double()
    randomize_bn_(model, seed=2)
    deploy = reparameterize(model)  # in fp64, so the check below sees conversion error, not fp32 rounding
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in deploy.parameters())
    assert [(n, p.shape) for n, p in deploy.named_parameters()] == [
        (n, p.shape) for n, p in plain.named_parameters()
    ]
    convs = [
        (1, 8),
        (8, 16),
        (16, 16),
        (16, 32),
        (32, 32),
    ]  # weights + biases of each 3x3 conv, then the head
    assert sum(p.numel() for p in deploy.parameters()) == sum(9 * a * b + b for a, b in convs) + 32 * 10 + 10
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        ref, got = model(x), deploy(x)
    assert (got - ref).abs().max().item() <= 1e-10 * ref.abs().max().item()


def test_small_cnn_dynamic_keeps_its_experts_and_bad_arguments_are_named() -> None:
    plain = sum(p.numel() for p in reparameterize(small_cnn("plain", width=8).eval()).parameters())
    dynamic = sum(p.numel() for p in reparameterize(small_cnn("dynamic", width=8).eval()).parameters())
    assert dynamic > 3 * plain  # four experts per conv plus routers
    assert small_cnn("plain", width=8)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="variant must be one of"):
        small_cnn("mobileone")
    with pytest.raises(ValueError, match="width must be >= 1"):
        small_cnn("plain", width=0)


@pytest.mark.slow
def test_detection_study_runs_the_zoo_and_measures_the_converted_checkpoint(tmp_path) -> None:
    pytest.importorskip("ultralytics")
    from reparam.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64)
    recipe = DetectionRecipe(data=data, imgsz=64, batch=4, latency_rounds=3)
    lines: list[str] = []
    result = run_study(
        "detection", ["plain", "repvgg"], seeds=(0,), epochs=1, out=tmp_path / "out", int8=True,
        recipe=recipe, progress=lines.append, lrs=(0.01, 0.02),
    )  # fmt: skip
    assert len(result.sweep) == 4 and set(result.chosen_lr.values()) <= {0.01, 0.02}
    held_out = (tmp_path / "out" / "sweep-data" / "sweep-val.txt").read_text().split()
    trained = (tmp_path / "out" / "sweep-data" / "sweep-train.txt").read_text().split()
    assert len(held_out) == 2 and len(trained) == 6 and not set(held_out) & set(trained)
    summary = _csv(result.files["summary"])
    assert [r["variant"] for r in summary] == ["plain", "repvgg"]
    assert summary[0]["params deploy"] == summary[1]["params deploy"]  # converted zoo model == plain YOLOv8n
    assert int(summary[1]["params train"]) > int(summary[1]["params deploy"])
    assert all(0.0 <= float(r["mAP50-95 mean"]) <= float(r["mAP50 mean"]) <= 1.0 for r in summary)
    assert (tmp_path / "out" / "runs" / "repvgg-seed0-val-deploy").is_dir()
    assert (tmp_path / "out" / "int8" / "repvgg-seed0.int8.onnx").is_file()
    for r in summary:  # INT8 of each test run: fp32 and INT8 ONNX validated, drop = their difference
        fp32, int8 = float(r["mAP50-95 ort fp32 mean"]), float(r["mAP50-95 int8 mean"])
        assert 0.0 <= int8 <= 1.0 and float(r["int8 drop mean"]) == pytest.approx(fp32 - int8, abs=1e-9)
        assert float(r["ort int8 b1 ms"]) > 0 and float(r["int8 speedup b1"]) > 0
    assert any(line.startswith("run ") and ": int8 plain lr" in line for line in lines)
