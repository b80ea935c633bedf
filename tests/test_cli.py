"""The ``reparam`` command line: key=value parsing, errors (exit code 2), help, and each command's wiring."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from reparam import cli
from reparam.cli import COMMANDS, main, parse_options
from reparam.data.deepforest import PreparedDataset, SplitStats


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "epoch=3"], "unknown key 'epoch' for 'reparam demo'; valid keys: model, data, epochs"),
        (["demo", "epochs=ten"], "bad value for epochs='ten': must be an integer >= 1"),
        (["demo", "epochs=0"], "bad value for epochs='0': must be an integer >= 1"),
        (["demo", "imgsz=16"], "bad value for imgsz='16': must be an integer >= 32"),
        (["bench", "train_cost=maybe"], "bad value for train_cost='maybe': must be True or False"),
        (["bench", "models=,"], "bad value for models=',': must be a comma-separated list"),
        (
            ["verify", "m.pt", "dtype=float16"],
            "bad value for dtype='float16': must be one of float32, float64",
        ),
        (["verify", "m.pt", "rtol=-1"], r"bad value for rtol='-1': must be in \(0, 1\]"),
        (["data", "min_visibility=1.5"], r"bad value for min_visibility='1.5': must be in \(0, 1\]"),
        (["verify", "imgsz=64"], "missing required key model="),
        (["info", "a.yaml", "b.yaml"], "unexpected argument 'b.yaml': arguments are key=value pairs"),
        (["demo", "epochs=1", "epochs=2"], "key 'epochs' is given twice"),
        (["train", "m.yaml", "lr0=abc"], "bad value: .*lr0"),
        (["train", "m.yaml", "no_such_key=1"], "unknown key 'no_such_key' for 'reparam train'"),
        (["demo", "--epochs", "3"], "unrecognized arguments: --epochs"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    err = _fails(argv, capsys)
    assert re.search(message, err), err
    assert f"usage: reparam {argv[0]}" in err


def test_no_command_prints_help_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_listing_its_keys(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: reparam {name}" in out
    for key in COMMANDS[name].keys:
        assert f"  {key.name}=" in out


def test_parse_options_types_defaults_and_positionals() -> None:
    opts = parse_options(COMMANDS["verify"], ["net.pt", "dtype=FLOAT64", "randomize_bn=yes", "rtol=1e-9"])
    assert opts == {
        "model": "net.pt",
        "imgsz": 320,
        "batch": 1,
        "dtype": "float64",
        "randomize_bn": True,
        "rtol": 1e-9,
        "per_block": True,
    }
    assert parse_options(COMMANDS["bench"], ["models=a.yaml, b.yaml"])["models"] == ["a.yaml", "b.yaml"]
    assert parse_options(COMMANDS["deploy"], ["ckpt=x.pt", "out=None"]) == {"ckpt": Path("x.pt"), "out": None}
    train = parse_options(
        COMMANDS["train"], ["m.yaml", "epochs=3", "lr0=0.02", "optimizer=SGD", "cos_lr=True"]
    )
    assert (
        train["epochs"] == 3
        and train["lr0"] == 0.02
        and train["optimizer"] == "SGD"
        and train["cos_lr"] is True
    )
    assert train["data"] is None and train["imgsz"] == 320


def test_demo_defaults_match_the_library_function() -> None:
    from reparam.demo import run_demo

    params = inspect.signature(run_demo).parameters
    for key in COMMANDS["demo"].keys:
        assert str(params[key.name].default) == str(key.default), key.name


def test_nothing_in_the_package_imports_the_cli() -> None:
    src = Path(cli.__file__).parent
    for path in src.rglob("*.py"):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "reparam.cli" and not (
                    node.module == "reparam" and "cli" in {a.name for a in node.names}
                ), path
            if isinstance(node, ast.Import):
                assert "reparam.cli" not in {a.name for a in node.names}, path


def test_data_command_prepares_and_prints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def fake(cache, tile, overlap, min_visibility, force, progress):
        calls.append((cache, tile, overlap, min_visibility, force))
        splits = {"train": SplitStats(["a.png"], 3, 7, 5, {"Tree": 7}), "val": SplitStats(["b.png"], 1, 2, 2)}
        return PreparedDataset(tmp_path / "data.yaml", tmp_path, splits, {"tile": tile})

    monkeypatch.setattr("reparam.data.deepforest.prepare_deepforest", fake)
    assert main(["data", f"cache={tmp_path}", "tile=64", "force=true"]) == 0
    assert calls == [(tmp_path, 64, 64, 0.5, True)]
    out = capsys.readouterr().out
    assert "train    3 tiles     7 boxes (Tree 7) cut from 1 photos with 5 boxes: a.png" in out


def test_train_command_passes_ultralytics_keys_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reparam import demo

    seen = {}

    def fake_train(progress, **kwargs):
        seen.update(kwargs)
        w = tmp_path / "weights"
        return demo.TrainResult(tmp_path, w / "best.pt", w / "last.pt", tmp_path / "results.csv", tmp_path)

    monkeypatch.setattr(demo, "train", fake_train)
    assert main(["train", "yolov8n-orepa.yaml", "data=d.yaml", "epochs=2", "lr0=0.02", "close_mosaic=0"]) == 0
    assert seen == {
        "model": "yolov8n-orepa.yaml",
        "data": "d.yaml",
        "epochs": 2,
        "imgsz": 320,
        "batch": 16,
        "device": "cpu",
        "project": Path("runs/reparam"),
        "name": "train",
        "lr0": 0.02,
        "close_mosaic": 0,
    }
    assert f"reparam deploy {tmp_path / 'weights' / 'best.pt'}" in capsys.readouterr().out


@pytest.mark.slow
def test_model_commands_on_a_zoo_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """info, verify, deploy, export and bench on an untrained zoo model at 64 px."""
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    model = "yolov8n-repvgg.yaml"
    assert main(["info", model, "imgsz=64"]) == 0
    out = capsys.readouterr().out
    assert "plain yolov8n.yaml" in out and "blocks: RepVGGBlock x5" in out
    assert "deploy needs reparam" not in out  # converted RepVGG blocks all have a stock form

    assert main(["info", "yolov8n.yaml", "imgsz=64"]) == 0
    assert "(no plain counterpart: yolov8n.yaml is not a zoo model)" in capsys.readouterr().out
    assert main(["info", "missing.pt"]) == 2
    assert "reparam info: error: model checkpoint missing.pt does not exist" in capsys.readouterr().err

    assert main(["verify", model, "imgsz=64", "dtype=float64", "randomize_bn=True"]) == 0
    out = capsys.readouterr().out
    assert "verify: PASS — 5 blocks converted" in out and "END-TO-END" in out

    YOLO(model).save(tmp_path / "m.pt")
    assert main(["deploy", str(tmp_path / "m.pt")]) == 0
    assert "deploy checkpoint: " in capsys.readouterr().out
    assert (tmp_path / "m-deploy.pt").is_file()

    assert main(["export", str(tmp_path / "m.pt"), "imgsz=64"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime vs PyTorch deploy form" in out and "PASS" in out
    assert (tmp_path / "m.onnx").is_file()

    bench = tmp_path / "bench"
    assert main(["bench", f"models={model}", "imgsz=64", "batch=2", "rounds=2", f"out={bench}"]) == 0
    assert {p.name for p in bench.iterdir()} == {"bench.md", "bench.csv", "latency_yolov8n-repvgg.png"}
    assert "| yolov8n-repvgg.yaml | converted |" in (bench / "bench.md").read_text()


def test_info_names_blocks_without_a_stock_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "yolov10n-dynamicconv.yaml", "imgsz=64"]) == 0
    out = capsys.readouterr().out
    assert "no stock Ultralytics form after conversion (deploy needs reparam): DynamicConv" in out
