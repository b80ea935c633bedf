"""No text from a file is ever evaluated: a model YAML, or the ``yaml`` dict inside a checkpoint, whose
``activation:`` or row arguments hold code is refused by every entry point (CLI and Python) with an error
naming the field, and the marker file the code would create never appears. Names as users write them
(``nn.LeakyReLU(0.1)``, ``relu``) still build the model they describe."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

import pytest
import torch
import yaml
from torch import nn

pytest.importorskip("ultralytics")

from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

import reparam.yolo
from reparam.app import describe, load, verify_model
from reparam.app.adopt import adopt as app_adopt
from reparam.cli import main

ROWS = {
    "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
    "head": [[-1, 1, "Conv", [16, 3, 2]], [[2], 1, "Detect", ["nc"]]],
}


def _code(marker: Path, value: str = "nn.SiLU()") -> str:
    """An expression that touches ``marker`` and then yields ``value``: code, if anything evaluated it."""
    return f"(__import__('os').system('touch {marker}'), {value})[1]"


def _tricks(marker: Path) -> dict[str, Callable[[dict], None]]:
    """Ways a file can hide the code in a model description: the activation, a row argument, a nested
    argument, an activation argument of a reparam block."""

    def activation(cfg: dict) -> None:
        cfg["activation"] = _code(marker)

    def conv_arg(cfg: dict) -> None:
        cfg["backbone"][0][3][2] = _code(marker, "2")

    def nested_arg(cfg: dict) -> None:
        cfg["backbone"][1][3] = [16, 3, [_code(marker, "2")]]

    def block_act(cfg: dict) -> None:
        cfg["backbone"][1] = [-1, 1, "RepVGGBlock", [16, 3, 2, _code(marker)]]

    return {"activation": activation, "conv arg": conv_arg, "nested arg": nested_arg, "block act": block_act}


TRICKS = ["activation", "conv arg", "nested arg", "block act"]
FIELD = {  # what each refusal names
    "activation": "activation: ",
    "conv arg": r"backbone row 0 args\[2\]=",
    "nested arg": r"backbone row 1 args\[2\]\[0\]=",
    "block act": r"backbone row 1 args\[3\]=",
}


def _cfg(marker: Path, trick: str) -> dict:
    cfg = {"nc": 2, **copy.deepcopy(ROWS)}
    _tricks(marker)[trick](cfg)
    return cfg


def _yaml_file(tmp: Path, trick: str) -> tuple[Path, Path]:
    marker = tmp / "MARKER"
    path = tmp / "evil.yaml"
    path.write_text(yaml.safe_dump(_cfg(marker, trick)))
    return path, marker


def _checkpoint(tmp: Path, trick: str) -> tuple[Path, Path]:
    """A real checkpoint of yolov8n whose ``model.yaml`` (what adopt and the trainer rebuild) hides code."""
    marker = tmp / "MARKER"
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    cfg = model.yaml
    if trick == "activation":
        cfg["activation"] = _code(marker)
    else:
        cfg["backbone"][0][3] = (
            [64, 3, 2, _code(marker)] if trick == "block act" else [64, 3, _code(marker, "2")]
        )
    path = tmp / "evil.pt"
    torch.save({"model": model, "train_args": {}}, path)
    return path, marker


def test_the_trick_is_live(tmp_path: Path) -> None:
    """The tests below can fail: Python's eval of the activation text runs it."""
    marker = tmp_path / "MARKER"
    assert isinstance(eval(_code(marker), {"nn": nn}), nn.SiLU)  # the point of the test
    assert marker.exists()


CLI = {
    "info": ["info", "{f}", "imgsz=64"],
    "verify": ["verify", "{f}", "imgsz=64"],
    "bench": ["bench", "models={f}", "imgsz=64", "rounds=1", "out=bench"],
    "train": ["train", "{f}", "data=missing.yaml"],
    "demo": ["demo", "model={f}", "data=missing.yaml"],
    "adopt": ["adopt", "{f}", "to=orepa", "where=all3x3"],
    "export": ["export", "{f}", "imgsz=64"],
    "deploy": ["deploy", "{f}", "out=d.pt"],
}


CASES = [("yaml", entry, trick) for entry in CLI if entry != "deploy" for trick in TRICKS] + [
    ("checkpoint", entry, trick)
    for entry in ("info", "verify", "adopt", "train", "deploy", "export")
    for trick in ("activation", "conv arg", "block act")
]


@pytest.mark.parametrize(("kind", "entry", "trick"), CASES)
def test_cli_refuses_code(
    kind: str,
    entry: str,
    trick: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ULTRALYTICS_SAFE_LOAD", "0")  # our refusal does not depend on Ultralytics' switch
    if kind == "yaml":
        path, marker = _yaml_file(tmp_path, trick)
        rule = FIELD[trick]
    else:
        path, marker = _checkpoint(tmp_path, trick)
        rule = r"model\.yaml.*" + ("activation: " if trick == "activation" else r"backbone row 0 args\[\d\]=")
    code = main([a.format(f=path) for a in CLI[entry]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert re.search(rule, err), err
    assert not marker.exists()


PYTHON: dict[str, Callable[[Path, Path], Any]] = {
    "load": lambda f, out: load(f),
    "describe": lambda f, out: describe(f, imgsz=64),
    "verify_model": lambda f, out: verify_model(f, imgsz=64),
    "adopt_checkpoint": lambda f, out: reparam.yolo.adopt_checkpoint(f, "orepa", out / "a.pt", "all3x3"),
    "app.adopt": lambda f, out: app_adopt(str(f), "repvgg", where="all3x3", out=out / "a.pt"),
    "deploy_checkpoint": lambda f, out: reparam.yolo.deploy_checkpoint(f, out / "a.pt"),
}


@pytest.mark.parametrize(
    ("kind", "entry"),
    [(k, e) for k in ("yaml", "checkpoint") for e in PYTHON if k == "checkpoint" or "deploy" not in e],
)
def test_python_entry_points_refuse_code(entry: str, kind: str, tmp_path: Path) -> None:
    path, marker = (_yaml_file if kind == "yaml" else _checkpoint)(tmp_path, "activation")
    with pytest.raises(ValueError, match=r"activation: .* is not an activation module"):
        PYTHON[entry](path, tmp_path)
    assert not marker.exists() and not (tmp_path / "a.pt").exists()


@pytest.mark.parametrize("trick", TRICKS)
def test_ultralytics_own_build_refuses_code_with_safe_load_off(
    trick: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ultralytics' parse_model evals ``activation:`` unless its safe-load switch is on; with reparam
    imported, building from a dict, a YAML path or ``YOLO(yaml)`` goes through the one check instead."""
    monkeypatch.setenv("ULTRALYTICS_SAFE_LOAD", "0")
    path, marker = _yaml_file(tmp_path, trick)
    for build in (lambda: DetectionModel(_cfg(marker, trick), verbose=False), lambda: YOLO(str(path))):
        with pytest.raises(ValueError, match=FIELD[trick]):
            build()
    assert not marker.exists()


def test_a_module_name_must_be_a_model_layer(tmp_path: Path) -> None:
    """A row naming a function of ultralytics.nn.tasks (which parse_model would call) is refused."""
    cfg = {"nc": 2, **copy.deepcopy(ROWS)}
    cfg["head"].insert(0, [-1, 1, "check_requirements", ["evil-package"]])
    with pytest.raises(ValueError, match=r"head row 0 module='check_requirements' is not a model layer"):
        DetectionModel(cfg, verbose=False)


@pytest.mark.parametrize(
    ("activation", "expected"),
    [
        ("nn.ReLU()", nn.ReLU),
        ("nn.LeakyReLU(0.1)", nn.LeakyReLU),
        ("relu", nn.ReLU),
        ("torch.nn.SiLU()", nn.SiLU),
    ],
)
def test_activations_as_users_write_them_still_build(activation: str, expected: type, tmp_path: Path) -> None:
    cfg = {"nc": 2, "activation": activation, **copy.deepcopy(ROWS)}
    model = DetectionModel(cfg, verbose=False)
    acts = [m.act for m in model.modules() if type(m).__name__ == "Conv"]
    assert acts and all(type(a) is expected for a in acts)
    if activation == "nn.LeakyReLU(0.1)":
        assert acts[0].negative_slope == pytest.approx(0.1)
    from ultralytics.nn.modules import Conv

    assert type(Conv.default_act) is nn.SiLU  # the process-wide default is restored
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert isinstance(load(path).model, DetectionModel)
