"""reparam.yolo.adopt_checkpoint / ``reparam adopt``: an Ultralytics YOLOv8n checkpoint (random weights, built
from yolov8n.yaml, nc=2) becomes a training checkpoint that computes the same function, whose YAML rebuilds
exactly the adopted model (what Ultralytics' trainer does), and whose deploy form is the original's fused."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from ultralytics import YOLO
from ultralytics.nn.modules.conv import Conv
from ultralytics.nn.tasks import DetectionModel

import reparam.yolo as ry
from reparam.adoption import FAMILIES
from reparam.bench.profile import count_params
from reparam.blocks.dynamic import DynamicConvBNAct
from reparam.blocks.registry import get_block
from reparam.cli import main
from reparam.convert import randomize_bn_
from reparam.data.synthetic import make_synthetic_dataset
from reparam.verification import relative_error
from reparam.yolo.adopt import FAMILY_BLOCKS, adopt_checkpoint
from reparam.yolo.safety import load_ultralytics_checkpoint

NC, IMGSZ = 2, 64
ZOO_ROWS = [0, 1, 3, 5, 7]  # yolov8: every backbone stride-2 Conv
STATIC = ("repvgg", "qarepvgg", "dbb", "orepa")
EXPERTS = 4


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YOLOv8n checkpoint written by ``YOLO.save`` (fp16 as Ultralytics stores it), random BN statistics."""
    torch.manual_seed(0)
    net = YOLO("yolov8n.yaml")
    net.model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    randomize_bn_(net.model)
    net.ckpt = {"train_args": {"imgsz": IMGSZ, "task": "detect", "epochs": 3}}  # as a trained file has
    path = tmp_path_factory.mktemp("adopt") / "yolov8n.pt"
    net.save(path)
    return path


@pytest.fixture(scope="module")
def adopted(source: Path) -> dict:
    """Every family adopted once (zoo selection); the files and reports are shared by the tests."""
    return {to: adopt_checkpoint(source, to) for to in FAMILIES}


def _model(path: Path) -> torch.nn.Module:
    ckpt = load_ultralytics_checkpoint(path)
    return (ckpt.get("ema") or ckpt["model"]).float().eval()


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _rel(a: torch.nn.Module, b: torch.nn.Module) -> float:
    x = _x()
    return relative_error(a.eval()(x), b.eval()(x))[1]


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("to", FAMILIES)
def test_adopted_checkpoint_computes_the_same_function(source: Path, adopted: dict, to: str) -> None:
    dst, report = adopted[to]
    assert dst == source.with_name(f"yolov8n-{to}.pt") and dst.is_file()
    original, new = _model(source), _model(dst)
    assert _rel(original, new) <= 1e-5
    assert report.ok and [r.name for r in report.layers] == [f"model.{i}" for i in ZOO_ROWS]
    assert report.transferred == 6 * len(ZOO_ROWS)  # conv weight + BN weight, bias, mean, var, count
    assert report.params_before == count_params(original) and report.params_after == count_params(new)
    block = get_block(FAMILY_BLOCKS[to])
    assert [i for i, m in enumerate(new.model) if isinstance(m, block)] == ZOO_ROWS
    assert all(new.model[i].type == f"{block.__module__}.{block.__name__}" for i in ZOO_ROWS)


@pytest.mark.parametrize("to", ["orepa", "dynamic"])
def test_checkpoint_layout_is_ultralytics_training_without_optimizer_state(
    source: Path, adopted: dict, to: str
) -> None:
    src, dst = load_ultralytics_checkpoint(source), load_ultralytics_checkpoint(adopted[to][0])
    assert dst["ema"] is None and dst["optimizer"] is None and dst["epoch"] == -1
    assert dst["train_args"] == src["train_args"]
    assert {p.dtype for p in dst["model"].parameters()} == {torch.float32}  # the exact start is not rounded
    assert dst["reparam_adopt"]["layers"] == [f"model.{i}" for i in ZOO_ROWS]


@pytest.mark.parametrize("to", FAMILIES)
def test_yaml_rebuilds_the_adopted_architecture(source: Path, adopted: dict, to: str) -> None:
    original, new = _model(source), _model(adopted[to][0])
    rows = new.yaml["backbone"] + new.yaml["head"]
    before = original.yaml["backbone"] + original.yaml["head"]
    assert [i for i, (a, b) in enumerate(zip(rows, before, strict=True)) if a != b] == ZOO_ROWS
    assert all(rows[i] == [before[i][0], 1, FAMILY_BLOCKS[to], before[i][3]] for i in ZOO_ROWS)
    rebuilt = DetectionModel(copy.deepcopy(new.yaml), verbose=False)
    assert _shapes(rebuilt) == _shapes(new)
    rebuilt.load_state_dict(new.state_dict())
    assert _rel(new, rebuilt) <= 1e-6  # BN eps/momentum come from the rebuild as well


def test_zoo_selection_is_the_zoo_yaml_and_names_it(adopted: dict) -> None:
    zoo = yaml.safe_load(ry.zoo_path("yolov8-orepa.yaml").read_text())
    positions = [i for i, r in enumerate(zoo["backbone"] + zoo["head"]) if r[2] == "OREPA"]
    assert positions == ZOO_ROWS
    new = _model(adopted["orepa"][0])
    assert new.yaml["backbone"] + new.yaml["head"] == zoo["backbone"] + zoo["head"]
    assert new.yaml["yaml_file"] == "yolov8n-orepa.yaml"
    assert ry.plain_counterpart(new.yaml["yaml_file"]) == "yolov8n.yaml"
    assert _model(adopted["dynamic"][0]).yaml["yaml_file"] == "yolov8n.yaml"  # no zoo model has these rows


@pytest.mark.parametrize("to", STATIC)
def test_round_trip_deploy_is_the_original_fused(source: Path, adopted: dict, to: str) -> None:
    deploy = _model(ry.deploy_checkpoint(adopted[to][0]))
    fused = copy.deepcopy(_model(source)).fuse(verbose=False)
    assert count_params(deploy) == count_params(fused)
    assert _shapes(deploy) == _shapes(fused)
    assert [type(m) for m in deploy.modules()] == [type(m) for m in fused.modules()]
    assert [r[2] for r in deploy.yaml["backbone"]] == [r[2] for r in fused.yaml["backbone"]]
    assert _rel(fused, deploy) <= 1e-5


def test_round_trip_dynamic_stays_dynamic(source: Path, adopted: dict) -> None:
    """DynamicConv has no static deploy form: the experts and router remain (exact parameter excess)."""
    with pytest.warns(UserWarning, match=r"export\) needs reparam installed"):
        dst = ry.deploy_checkpoint(adopted["dynamic"][0], standalone=False)
    deploy, fused = _model(dst), copy.deepcopy(_model(source)).fuse(verbose=False)
    assert [i for i, m in enumerate(deploy.model) if isinstance(m, DynamicConvBNAct)] == ZOO_ROWS
    extra = sum(
        (EXPERTS - 1) * m.conv.out_channels * m.conv.in_channels * 9 + EXPERTS * (m.conv.in_channels + 1)
        for m in (fused.model[i] for i in ZOO_ROWS)
    )
    assert count_params(deploy) == count_params(fused) + extra
    assert _rel(fused, deploy) <= 1e-5


def test_all3x3_and_row_indices(source: Path, tmp_path: Path) -> None:
    dst, report = adopt_checkpoint(source, "repvgg", tmp_path / "all.pt", "all3x3")
    assert [r.name for r in report.layers] == [f"model.{i}" for i in (*ZOO_ROWS, 16, 19)]
    assert _rel(_model(source), _model(dst)) <= 1e-5
    _, report = adopt_checkpoint(source, "dbb", tmp_path / "one.pt", [3])
    assert [r.name for r in report.layers] == ["model.3"]


@pytest.mark.parametrize(
    ("to", "where", "message"),
    [
        ("bogus", "zoo", "to='bogus' is not a block family; choose one of repvgg, qarepvgg, dbb, orepa"),
        ("orepa", "everything", "where='everything' must be one of"),
        ("orepa", [2], r"row\(s\) \[2\] are not Conv rows of the model's YAML"),
        ("orepa", ["1"], "row indices must be a non-empty list of ints"),
    ],
)
def test_bad_arguments_name_the_problem(source: Path, tmp_path: Path, to: str, where, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        adopt_checkpoint(source, to, tmp_path / "x.pt", where)
    assert not (tmp_path / "x.pt").exists()


def test_fused_and_foreign_models_are_refused(tmp_path: Path) -> None:
    net = YOLO("yolov8n.yaml")
    net.model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False).fuse(verbose=False)
    net.save(tmp_path / "fused.pt")
    with pytest.raises(ValueError, match="holds a fused model"):
        adopt_checkpoint(tmp_path / "fused.pt", "orepa")
    torch.save({"model": torch.nn.Sequential(Conv(3, 8, 3, 2))}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="holds a Sequential under .model., not an Ultralytics model"):
        adopt_checkpoint(tmp_path / "plain.pt", "orepa")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_adopt_writes_refuses_existing_and_bad_to(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.pt"
    assert main(["adopt", str(source), "to=qarepvgg", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "5 layer(s) replaced" in printed and f"wrote {out}" in printed
    before = _sha(out)
    for argv, problem in (
        (["adopt", str(source), "to=qarepvgg", f"out={out}"], "already exists; pass overwrite=True"),
        (["adopt", str(source), "to=conv", f"out={tmp_path / 'b.pt'}"], "to='conv' is not a block family"),
        (["adopt", str(source), "to=dbb", "where=0,x", f"out={tmp_path / 'b.pt'}"], "where='0,x' must be"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and problem in err, err
    assert _sha(out) == before and not (tmp_path / "b.pt").exists()
    assert main(["adopt", str(source), "to=qarepvgg", f"out={out}", "overwrite=True"]) == 0


@pytest.mark.slow
def test_adopted_checkpoint_fine_tunes_from_the_adopted_weights(adopted: dict, tmp_path: Path) -> None:
    """YOLO(dst).train() rebuilds the model from the renamed YAML and starts from every adopted tensor."""
    dst = adopted["orepa"][0]
    expected = _model(dst).state_dict()
    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=IMGSZ, nc=NC)
    net = YOLO(str(dst))
    start: dict = {}
    net.add_callback(
        "on_train_start", lambda t: start.update({k: v.clone() for k, v in t.model.state_dict().items()})
    )
    net.train(
        data=str(data), epochs=1, imgsz=IMGSZ, batch=4, workers=0, device="cpu", amp=False, plots=False,
        project=str(tmp_path / "runs"), name="ft", trainer=ry.ReparamDetectionTrainer, verbose=False, seed=0,
    )  # fmt: skip
    assert start.keys() == expected.keys()
    assert all(torch.equal(start[k].float(), expected[k].float()) for k in expected)
    last = _model(Path(net.trainer.save_dir) / "weights" / "last.pt")
    assert [i for i, m in enumerate(last.model) if type(m).__name__ == "OREPA"] == ZOO_ROWS


def test_cli_failed_check_exits_1_and_writes_nothing(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import reparam.yolo.adopt as yolo_adopt

    monkeypatch.setattr(yolo_adopt, "_rebuild_check", lambda model, x: 0.5)  # a YAML that rebuilds wrongly
    out = tmp_path / "bad.pt"
    assert main(["adopt", str(source), "to=orepa", f"out={out}"]) == 1
    assert "[FAIL]" in capsys.readouterr().out and not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
