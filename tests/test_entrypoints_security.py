"""Every entry point that reads a checkpoint (CLI commands, app functions, deploy_checkpoint) refuses a
malicious pickle before any of its code runs, still loads reparam's own files, loads a file with an unlisted
class only with an explicit ``trust=True``, and never replaces a user's file unless given ``overwrite=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # skip Ultralytics' DNS probe at import: nothing may download

import pytest
import torch

pytest.importorskip("ultralytics")

import ultralytics.nn.tasks as tasks
from ultralytics import YOLO

import reparam.app.models as app_models
import reparam.yolo
from checkpoint_payloads import Harmless, SystemPayload, TouchPayload
from reparam.app import deploy, describe, export_model, load, run_bench, run_demo, train, verify_model
from reparam.app.adopt import adopt as app_adopt
from reparam.app.export import export_onnx
from reparam.bench.report import write_csv
from reparam.cli import main
from reparam.io import OverwriteRefusedError, UnsafeCheckpointError
from reparam.weights import load_weights
from reparam.yolo.safety import load_ultralytics_checkpoint

PAYLOADS = {f"{os.system.__module__}.system": SystemPayload, "pathlib.Path": TouchPayload}

RUNS_CODE = (  # what a hostile file is told: what was found, never an invitation to pass trust=True
    "which can run code (a function, or a class of a module that runs programs or touches files); refused: "
    "this file was made to run code (do not load it, not even with trust=True)"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YOLO.save file of an OREPA model, its deploy checkpoint, and the same file carrying one harmless
    object of a class on no allow-list (as a file written by an older or patched tool might)."""
    root = tmp_path_factory.mktemp("files")
    YOLO("yolov8n-orepa.yaml").save(root / "model.pt")
    reparam.yolo.deploy_checkpoint(root / "model.pt", root / "deploy.pt")
    legacy = load_ultralytics_checkpoint(root / "model.pt")
    legacy["note"] = Harmless("written by an older tool", 1)
    torch.save(legacy, root / "legacy.pt")
    return root


def _evil(folder: Path, first: str) -> tuple[Path, Path]:
    """A checkpoint whose unpickling touches a marker file, and that marker (absent)."""
    marker = folder / "marker"
    path = folder / "evil.pt"
    torch.save({"model": PAYLOADS[first](marker)}, path)
    return path, marker


def _listing(folder: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The refusal tests below can fail: a plain full unpickle of the file runs its code."""
    path, marker = _evil(tmp_path, "pathlib.Path")
    torch.load(path, weights_only=False)
    assert marker.exists()


CLI_READS = {
    "verify": ["verify", "{evil}"],
    "info": ["info", "{evil}"],
    "export": ["export", "{evil}"],
    "deploy": ["deploy", "{evil}"],
    "deploy out=": ["deploy", "{evil}", "out=d.pt"],
    "bench models=": ["bench", "models=yolov8n-repvgg.yaml,{evil}", "rounds=1", "out=bench"],
    "train model=": ["train", "{evil}", "data=missing.yaml"],
    "train resume=": ["train", "yolov8n-repvgg.yaml", "resume={evil}", "data=missing.yaml"],
    "train pretrained=": ["train", "yolov8n-repvgg.yaml", "pretrained={evil}", "data=missing.yaml"],
    "demo model=": ["demo", "model={evil}", "data=missing.yaml"],
    "adopt model=": ["adopt", "{evil}", "to=orepa"],
}


@pytest.mark.parametrize("first", list(PAYLOADS))
@pytest.mark.parametrize("entry", list(CLI_READS))
def test_cli_refuses_a_malicious_checkpoint(
    entry: str,
    first: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ULTRALYTICS_SAFE_LOAD", "0")  # our default does not depend on Ultralytics' switch
    path, marker = _evil(tmp_path, first)
    before = _listing(tmp_path)
    err = _one_error_line([a.format(evil=path) for a in CLI_READS[entry]], capsys)
    command = CLI_READS[entry][0]
    assert err == (f"reparam {command}: error: checkpoint {str(path)!r} asks for {first}, {RUNS_CODE}")
    assert not marker.exists()
    assert _listing(tmp_path) == before  # nothing written, nothing half-made


APP_READS: dict[str, Callable[[Path, Path], Any]] = {
    "load": lambda evil, out: load(evil),
    "verify_model": lambda evil, out: verify_model(evil, imgsz=64),
    "describe": lambda evil, out: describe(evil, imgsz=64),
    "export_model": lambda evil, out: export_model(evil, imgsz=64),
    "export_onnx": lambda evil, out: export_onnx(evil, 64),
    "deploy": lambda evil, out: deploy(evil, out / "d.pt"),
    "run_bench": lambda evil, out: run_bench([str(evil)], imgsz=64, rounds=1, out=out / "bench"),
    "train": lambda evil, out: train(str(evil), data=out / "missing.yaml"),
    "train resume=": lambda evil, out: train("yolov8n-repvgg.yaml", data=out / "m.yaml", resume=str(evil)),
    "run_demo": lambda evil, out: run_demo(str(evil), data=out / "missing.yaml", out=out / "demo"),
    "deploy_checkpoint": lambda evil, out: reparam.yolo.deploy_checkpoint(evil, out / "d.pt"),
    "load_ultralytics_checkpoint": lambda evil, out: load_ultralytics_checkpoint(evil),
    "load_weights": lambda evil, out: load_weights(torch.nn.Conv2d(1, 1, 1), evil),
    "adopt_checkpoint": lambda evil, out: reparam.yolo.adopt_checkpoint(evil, "orepa", out / "a.pt"),
    "app.adopt": lambda evil, out: app_adopt(str(evil), "repvgg", out=out / "a.pt"),
}


@pytest.mark.parametrize("entry", list(APP_READS))
def test_python_entry_points_refuse_a_malicious_checkpoint(entry: str, tmp_path: Path) -> None:
    first = f"{os.system.__module__}.system"
    path, marker = _evil(tmp_path, first)
    before = _listing(tmp_path)
    with pytest.raises(
        UnsafeCheckpointError,
        match=rf"{str(path)!r} asks for {first}, which can run code.* not even with trust=True",
    ):
        APP_READS[entry](path, tmp_path)
    assert not marker.exists()
    assert _listing(tmp_path) == before


def test_ultralytics_loads_in_safe_mode_behind_our_check(
    files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Second layer: Ultralytics itself reads the file weights-only (its SAFE_LOAD on), so even with our
    check switched off the payload does not run; its switch is restored afterwards."""
    seen = []

    def spy(*args: Any, **kwargs: Any) -> YOLO:
        seen.append(tasks.SAFE_LOAD)
        return YOLO(*args, **kwargs)

    monkeypatch.setattr(app_models, "YOLO", spy)
    assert type(load(files / "model.pt").model).__name__ == "DetectionModel"
    assert seen == [True] and tasks.SAFE_LOAD is False
    path, marker = _evil(tmp_path, "pathlib.Path")
    monkeypatch.setattr(app_models, "check_checkpoint", lambda *a, **k: None)
    with pytest.raises(ValueError, match="references types outside the supported Ultralytics checkpoint"):
        load(path)
    assert not marker.exists()


def test_our_files_load_through_the_cli(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(files / "model.pt"), "imgsz=64", "per_block=False"]) == 0
    assert "verify: PASS — 5 blocks converted" in capsys.readouterr().out
    assert main(["info", str(files / "deploy.pt"), "imgsz=64"]) == 0
    out = capsys.readouterr().out
    assert "training form       3,151,904" in out and "blocks: none" in out


def test_trust_loads_a_file_with_an_unlisted_class(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    legacy = str(files / "legacy.pt")
    for argv in (["info", legacy], ["verify", legacy], ["deploy", legacy]):
        err = _one_error_line(argv, capsys)
        assert "asks for checkpoint_payloads.Harmless, which is not on the allow-list" in err, err
    assert main(["verify", legacy, "imgsz=64", "per_block=False", "trust=True"]) == 0
    assert "verify: PASS — 5 blocks converted" in capsys.readouterr().out
    assert type(load(legacy, trust=True).model).__name__ == "DetectionModel"


def test_deploy_never_replaces_a_file_unless_told(
    files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine.pt"
    out.write_bytes(b"the user's own file")
    before = _listing(tmp_path)
    err = _one_error_line(["deploy", str(files / "model.pt"), f"out={out}"], capsys)
    assert err == f"reparam deploy: error: {str(out)!r} already exists; pass overwrite=True to replace it"
    assert _listing(tmp_path) == before and out.read_bytes() == b"the user's own file"
    assert main(["deploy", str(files / "model.pt"), f"out={out}", "overwrite=True"]) == 0
    assert f"deploy checkpoint: {out}" in capsys.readouterr().out
    assert sorted(tmp_path.iterdir()) == [out]  # replaced in place, no temporary left behind
    assert type(load_ultralytics_checkpoint(out)["model"]).__name__ == "DetectionModel"


def test_deploy_default_output_is_not_replaced(
    files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "run.pt"
    ckpt.write_bytes((files / "model.pt").read_bytes())
    (tmp_path / "run-deploy.pt").write_bytes(b"previous deploy file")
    err = _one_error_line(["deploy", str(ckpt)], capsys)
    assert err.endswith("run-deploy.pt' already exists; pass overwrite=True to replace it")
    assert (tmp_path / "run-deploy.pt").read_bytes() == b"previous deploy file"


def test_export_never_replaces_a_file_unless_told(
    files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "net.pt"
    ckpt.write_bytes((files / "deploy.pt").read_bytes())
    onnx = tmp_path / "net.onnx"
    onnx.write_bytes(b"an earlier export")
    before = _listing(tmp_path)
    err = _one_error_line(["export", str(ckpt), "imgsz=64"], capsys)
    assert err == f"reparam export: error: {str(onnx)!r} already exists; pass overwrite=True to replace it"
    assert _listing(tmp_path) == before
    err = _one_error_line(["export", str(ckpt), "format=onnnx"], capsys)
    assert "format='onnnx' is not an Ultralytics export format; one of: torchscript, onnx," in err
    assert main(["export", str(ckpt), "imgsz=64", "check=False", "overwrite=True"]) == 0
    assert onnx.read_bytes()[:2] != b"an" and onnx.stat().st_size > 1_000_000


def test_report_files_are_written_atomically_and_not_replaced_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_csv(path, [{"a": 1, "b": 2}])
    with pytest.raises(OverwriteRefusedError, match=r"t\.csv' already exists; pass overwrite=True"):
        write_csv(path, [{"a": 3}])
    assert path.read_text().splitlines() == ["a,b", "1,2"]
    write_csv(path, [{"a": 3}], overwrite=True)
    assert path.read_text().splitlines() == ["a", "3"] and sorted(tmp_path.iterdir()) == [path]


@pytest.mark.slow
def test_training_reads_checkpoints_in_safe_mode(
    files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training from a checkpoint (model= and pretrained=) runs with Ultralytics' safe load on, including its
    own reloads of last.pt/best.pt; the result loads and deploys safely; the switch is restored."""
    from reparam.data.synthetic import make_synthetic_dataset

    monkeypatch.delenv("ULTRALYTICS_SAFE_LOAD", raising=False)
    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, imgsz=64)
    common = [f"data={data}", "epochs=1", "imgsz=64", "batch=2", "workers=0", "plots=False", "amp=False"]
    args = ["train", str(files / "model.pt"), *common, f"project={tmp_path / 'runs'}", "name=a"]
    assert main(args) == 0
    best = tmp_path / "runs" / "a" / "weights" / "best.pt"
    assert f"weights: {best}" in capsys.readouterr().out
    assert tasks.SAFE_LOAD is False and "ULTRALYTICS_SAFE_LOAD" not in os.environ
    assert main(["deploy", str(best)]) == 0 and best.with_name("best-deploy.pt").is_file()
    pretrained = [
        "train",
        "yolov8n-orepa.yaml",
        f"pretrained={best}",
        *common,
        f"project={tmp_path / 'runs'}",
    ]
    assert main([*pretrained, "name=b"]) == 0
    assert main(["info", str(tmp_path / "runs" / "b" / "weights" / "last.pt"), "imgsz=64"]) == 0


@pytest.mark.slow
def test_demo_runs_twice_in_a_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo owns its out= folder: a second run replaces its earlier files instead of refusing them."""
    from reparam.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, imgsz=64)
    argv = ["demo", f"data={data}", "epochs=1", "imgsz=64", "batch=2", f"out={tmp_path / 'demo'}", "rounds=1"]
    argv.append("throughput_batch=2")
    assert main(argv) == 0  # every check passes (1 would be a failed equivalence check)
    first = (tmp_path / "demo" / "report" / "summary.md").stat().st_mtime_ns
    assert main(argv) == 0  # every check passes (1 would be a failed equivalence check)
    capsys.readouterr()
    assert (tmp_path / "demo" / "report" / "summary.md").stat().st_mtime_ns > first
    assert not list((tmp_path / "demo").rglob(".*.tmp"))
