"""The ``reparam`` command line: key=value parsing, errors (exit code 2), help, and each command's wiring."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import sys
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
        (["deploy", "m.pt", "overwrite=maybe"], "bad value for overwrite='maybe': must be True or False"),
        (["verify", "m.pt", "trust=please"], "bad value for trust='please': must be True or False"),
        (["export", "m.pt", "trust="], "bad value for trust='': must be True or False"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    err = _fails(argv, capsys)
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"reparam {argv[0]}: error: "), err
    assert err.count("--help") == 1, err


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
        "trust": False,
    }
    assert parse_options(COMMANDS["bench"], ["models=a.yaml, b.yaml"])["models"] == ["a.yaml", "b.yaml"]
    assert parse_options(COMMANDS["deploy"], ["ckpt=x.pt", "out=None"]) == {
        "ckpt": Path("x.pt"),
        "out": None,
        "overwrite": False,
        "trust": False,
    }
    assert parse_options(COMMANDS["deploy"], ["x.pt", "overwrite=yes", "trust=True"])["overwrite"] is True
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


@pytest.mark.parametrize("name", ["demo", "train", "deploy", "verify", "export", "info", "bench"])
def test_every_command_reading_a_checkpoint_has_trust_off_by_default(name: str) -> None:
    keys = {k.name: k for k in COMMANDS[name].keys}
    assert keys["trust"].default is False and keys["trust"].parse("True") is True


def test_commands_writing_a_user_named_file_have_overwrite_off_by_default() -> None:
    for name in ("deploy", "export"):
        assert {k.name: k.default for k in COMMANDS[name].keys}["overwrite"] is False


def test_demo_defaults_match_the_library_function() -> None:
    from reparam.app import run_demo

    params = inspect.signature(run_demo).parameters
    for key in COMMANDS["demo"].keys:
        assert str(params[key.name].default) == str(key.default), key.name


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_imports_flow_one_way_core_yolo_app_cli() -> None:
    """Nothing imports the CLI; the app layer is imported only by the CLI and by study/ (built on the
    commands): the core, yolo/, bench/ and data/ never import it."""
    src = Path(cli.__file__).parent
    for path in src.rglob("*.py"):
        rel = path.relative_to(src).as_posix()
        imported = _imported_modules(path)
        if rel != "cli.py":
            assert not any(m == "reparam.cli" or m.startswith("reparam.cli.") for m in imported), rel
        if not rel.startswith(("app/", "study/")) and rel != "cli.py":
            assert not any(m == "reparam.app" or m.startswith("reparam.app.") for m in imported), rel
    assert not (src / "demo.py").exists()


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
    from reparam.app import TrainResult

    seen = {}

    def fake_train(progress, **kwargs):
        seen.update(kwargs)
        w = tmp_path / "weights"
        return TrainResult(tmp_path, w / "best.pt", w / "last.pt", tmp_path / "results.csv", tmp_path)

    monkeypatch.setattr(importlib.import_module("reparam.app.train"), "train", fake_train)
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
        "trust": False,
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
    assert capsys.readouterr().err == (
        "reparam info: error: model checkpoint missing.pt does not exist (reparam never downloads weights)\n"
    )

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


# ---------------------------------------------------------------- bad input: exit 2, one line, no traceback


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Ultralytics checkpoint of a small zoo model (untrained)."""
    from ultralytics import YOLO

    import reparam.yolo  # noqa: F401  (zoo YAML lookup)

    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    YOLO("yolov8n-repvgg.yaml").save(path)
    return path


def _bad_input(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``; assert exit 2 and exactly one stderr line, which is returned."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


def _corrupt(kind: str, checkpoint: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        data = checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not-a-checkpoint":
        import torch

        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("random", "is not a readable torch checkpoint (empty, truncated or corrupt?)"),
        ("truncated", "is not a readable torch checkpoint (empty, truncated or corrupt?)"),
        ("not-a-checkpoint", "holds a state dict of 1 tensor ('weights'), not an Ultralytics model"),
        ("directory", "is a directory"),
    ],
)
@pytest.mark.parametrize("command", ["verify", "info", "deploy", "export"])
def test_unreadable_model_files_exit_2_with_one_line(
    command: str,
    kind: str,
    problem: str,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _corrupt(kind, checkpoint, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    err = _bad_input([command, str(path)], capsys)
    assert err.startswith(f"reparam {command}: error: ") and str(path) in err and problem in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written next to the bad input


def test_wrong_kind_of_model_argument_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    err = _bad_input(["verify", str(tmp_path / "notes.txt")], capsys)
    assert "unsupported file type, expected a zoo name, a .yaml or a .pt file" in err
    err = _bad_input(["info", "no-such-model.yaml"], capsys)
    assert err == (
        "reparam info: error: model no-such-model.yaml does not exist: not a file, a reparam zoo name or an "
        "Ultralytics model YAML"
    )


@pytest.mark.parametrize("command", ["train", "demo"])
def test_missing_data_yaml_exits_2_before_any_work(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    model = [] if command == "demo" else ["yolov8n-repvgg.yaml"]
    err = _bad_input([command, *model, "data=missing.yaml", "epochs=1"], capsys)
    assert err == f"reparam {command}: error: data YAML missing.yaml does not exist"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "d").mkdir()
    err = _bad_input([command, *model, f"data={tmp_path / 'd'}"], capsys)
    assert err.endswith("is a directory, expected a data YAML file")


@pytest.mark.parametrize(
    ("argv", "key", "purpose"),
    [
        (["demo", "epochs=1"], "out", "the demo's files"),
        (["bench", "models=yolov8n-repvgg.yaml"], "out", "the report"),
        (["train", "yolov8n-repvgg.yaml", "epochs=1"], "project", "the training runs"),
    ],
)
def test_an_output_folder_that_is_a_file_exits_2_before_any_work(
    argv: list[str], key: str, purpose: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "taken.txt"
    file.write_text("mine")
    err = _bad_input([*argv, f"{key}={file}"], capsys)
    assert err == f"reparam {argv[0]}: error: {key}={file} is a file, expected a folder for {purpose}"
    assert file.read_text() == "mine" and list(tmp_path.iterdir()) == [file]


def test_debug_flag_and_env_show_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt' is not a readable torch checkpoint"):
        main(["--debug", "verify", str(bad)])
    monkeypatch.setenv("REPARAM_DEBUG", "1")
    with pytest.raises(ValueError, match="bad.pt' is not a readable torch checkpoint"):
        main(["verify", str(bad)])
    monkeypatch.setenv("REPARAM_DEBUG", "0")
    assert main(["verify", str(bad)]) == 2


def test_imgsz_not_a_multiple_of_32_is_rounded_up_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "yolov8n-repvgg.yaml", "imgsz=100"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "reparam info: warning: imgsz=100 is not a multiple of the stride 32; using imgsz=128\n"
    )
    assert captured.out.startswith("yolov8n-repvgg.yaml at 128x128\n")
    assert main(["info", "yolov8n-repvgg.yaml", "imgsz=64"]) == 0
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- fonts: no file written, no download


def test_importing_reparam_writes_nothing_into_ultralytics_config(tmp_path: Path) -> None:
    """Compared with importing Ultralytics alone, ``import reparam.yolo, reparam.app`` adds no file."""

    def files_after(code: str, folder: Path) -> set[str]:
        env = {**os.environ, "YOLO_CONFIG_DIR": str(folder)}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr
        return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}

    baseline = files_after("import ultralytics.utils.plotting", tmp_path / "plain")
    ours = files_after("import reparam.yolo, reparam.app, reparam.cli", tmp_path / "reparam")
    assert ours == baseline
    assert not any(name.endswith(".ttf") for name in ours)


def _refuse_downloads(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Make Ultralytics' downloader record and refuse every call (Annotator swallows exceptions)."""
    from ultralytics.utils import downloads

    calls: list[tuple] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise AssertionError("Ultralytics tried to download")

    monkeypatch.setattr(downloads, "safe_download", refuse)
    monkeypatch.setattr(downloads, "is_url", refuse)
    return calls


def test_plot_fonts_serve_dejavu_locally_and_only_inside_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    from ultralytics.data import utils as data_utils
    from ultralytics.utils import checks, plotting

    from reparam.yolo.fonts import plot_fonts

    monkeypatch.setattr(checks, "USER_CONFIG_DIR", tmp_path)  # no font kept from earlier runs
    calls = _refuse_downloads(monkeypatch)
    original = plotting.check_font
    with plot_fonts() as fallback, plot_fonts():
        assert fallback.name == "DejaVuSans.ttf" and fallback.is_file()
        for module in (checks, plotting, data_utils):
            assert module.check_font("Arial.ttf").is_file()
        annotator = plotting.Annotator(np.zeros((64, 64, 3), np.uint8), pil=True, example="tree")
        annotator.box_label([2, 2, 40, 40], "tree")
        assert Path(annotator.font.path).is_file()
    assert calls == [] and list(tmp_path.iterdir()) == []
    assert plotting.check_font is original and data_utils.check_font is original


@pytest.mark.slow
def test_training_with_plots_downloads_no_font(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ultralytics.utils import checks

    from reparam.data.synthetic import make_synthetic_dataset

    config = tmp_path / "config"
    config.mkdir()
    monkeypatch.setattr(checks, "USER_CONFIG_DIR", config)
    calls = _refuse_downloads(monkeypatch)
    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, imgsz=64)
    argv = ["train", "yolov8n-repvgg.yaml", f"data={data}", "epochs=1", "imgsz=64", "batch=2"]
    argv += [f"project={tmp_path / 'runs'}", "plots=True", "amp=False", "workers=0", "val=True"]
    assert main(argv) == 0
    run = tmp_path / "runs" / "train"
    assert (run / "weights" / "best.pt").is_file()
    assert any(run.glob("train_batch*.jpg"))  # Annotator drew labelled mosaics
    assert calls == [] and list(config.iterdir()) == []
