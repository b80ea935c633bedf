"""reparam.yolo.safety: the Ultralytics + reparam allow-list, our files loading with it, safe-load mode."""

from __future__ import annotations

import copy
import inspect
import os
import pkgutil
from datetime import datetime

os.environ.setdefault("YOLO_OFFLINE", "1")  # skip Ultralytics' DNS probe at import: nothing may download

import pytest
import torch
from torch import nn

pytest.importorskip("ultralytics")

import ultralytics
import ultralytics.nn.tasks as tasks
import ultralytics.utils as ul_utils
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
from ultralytics.nn.modules import C2f, Conv, Detect
from ultralytics.utils import IterableSimpleNamespace

import reparam.blocks
import reparam.yolo
from checkpoint_payloads import ConstructorPayload, Harmless, SystemPayload, TouchPayload
from reparam.io import UnsafeCheckpointError, global_name
from reparam.yolo.safety import checkpoint_allow_list, load_ultralytics_checkpoint, ultralytics_safe_load

RUNS_CODE = (  # what a hostile file is told: what was found, never an invitation to pass trust=True
    "which can run code (a function, or a class of a module that runs programs or touches files); refused: "
    "this file was made to run code (do not load it, not even with trust=True)"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every kind of file reparam reads: YOLO.save of a plain and an OREPA model, a deploy checkpoint, a
    training checkpoint laid out as Ultralytics' trainer writes it, and a state dict."""
    root = tmp_path_factory.mktemp("ckpts")
    plain, orepa = YOLO("yolov8n.yaml"), YOLO("yolov8n-orepa.yaml")
    plain.save(root / "plain.pt")
    orepa.save(root / "orepa.pt")
    reparam.yolo.deploy_checkpoint(root / "orepa.pt", root / "deploy.pt")
    model = orepa.model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.stack([p.square().sum() for p in model.parameters()]).sum().backward()
    optimizer.step()
    torch.save(
        {
            "epoch": 0,
            "best_fitness": 0.1,
            "model": None,
            "ema": copy.deepcopy(model).half(),
            "updates": 1,
            "optimizer": optimizer.state_dict(),
            "scaler": torch.amp.GradScaler("cpu").state_dict(),
            "train_args": vars(get_cfg()),
            "train_metrics": {"metrics/mAP50(B)": 0.5, "fitness": 0.1},
            "train_results": {"epoch": [1], "train/box_loss": [1.5]},
            "date": datetime.now().isoformat(),
            "version": ultralytics.__version__,
            "git": {"root": None, "branch": None, "commit": None},
        },
        root / "last.pt",
    )
    torch.save(model.state_dict(), root / "state_dict.pt")
    return root


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_allow_list_holds_exactly_the_checkpoint_classes():
    entries = checkpoint_allow_list()
    names = [global_name(e) for e in entries]
    assert len(names) == len(set(names)) and names == sorted(names)
    table = dict(zip(names, entries, strict=True))
    for cls in (Conv, C2f, Detect, nn.SiLU, nn.Conv2d, nn.BatchNorm2d, nn.Sequential, nn.ModuleList):
        assert table[global_name(cls)] is cls
    for name in ("Detection", "Segmentation", "Pose", "OBB", "Classification", "RTDETRDetection"):
        assert f"ultralytics.nn.tasks.{name}Model" in table
    blocks = {
        obj
        for info in pkgutil.walk_packages(reparam.blocks.__path__, prefix="reparam.blocks.")
        for obj in vars(__import__(info.name, fromlist=["_"])).values()
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == info.name
    }
    assert blocks and all(table[global_name(cls)] is cls for cls in blocks)
    assert table["ultralytics.utils.IterableSimpleNamespace"][0] is IterableSimpleNamespace
    # risky globals: none, except Ultralytics' getattr that only resolves nn.Module/Enum attributes
    risky = ("posix.system", "os.system", "builtins.eval", "builtins.exec", "builtins.open", "pathlib.Path")
    assert not set(risky) & set(table)
    getattr_entry = table["builtins.getattr"]
    assert isinstance(getattr_entry, tuple) and getattr_entry[0] is not getattr
    with pytest.raises(Exception, match="blocked"):
        getattr_entry[0](os, "system")
    others = [n for n, e in table.items() if not (isinstance(e, type) and issubclass(e, nn.Module))]
    assert all(n.startswith(("ultralytics.", "numpy", "pathlib", "builtins.getattr")) for n in others), others


@pytest.mark.parametrize("kind", ["plain", "orepa", "deploy", "last"])
def test_our_checkpoints_load(files, kind):
    ckpt = load_ultralytics_checkpoint(files / f"{kind}.pt")
    model = ckpt["ema"] if kind == "last" else ckpt["model"]
    reference = torch.load(files / f"{kind}.pt", map_location="cpu", weights_only=False)
    expected = reference["ema"] if kind == "last" else reference["model"]
    assert type(model) is type(expected) and _n_params(model) == _n_params(expected)
    got, want = model.state_dict(), expected.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    if kind == "last":
        assert ckpt["train_args"] == reference["train_args"] and ckpt["optimizer"]["state"]


def test_state_dict_loads(files):
    sd = load_ultralytics_checkpoint(files / "state_dict.pt")
    assert sum(v.numel() for k, v in sd.items() if "num_batches" not in k) > 3_000_000


@pytest.mark.parametrize(
    ("payload", "first"), [(SystemPayload, "posix.system"), (TouchPayload, "pathlib.Path")]
)
@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_file_is_refused(tmp_path, payload, first, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"model": payload(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_ultralytics_checkpoint(path)
    assert str(info.value) == (f"checkpoint {str(path)!r} asks for {first}, {RUNS_CODE}")
    assert not marker.exists()


def test_model_constructor_call_is_refused(tmp_path):
    """An allowed model class called as a constructor evaluates the YAML's activation string: code."""
    marker = tmp_path / "marker"
    cfg = {
        "nc": 1,
        "activation": f"__import__('pathlib').Path({str(marker)!r}).touch() or nn.SiLU()",
        "backbone": [[-1, 1, "Conv", [8, 3, 2]]],
        "head": [[-1, 1, "Conv", [8, 3, 2]]],
    }
    path = tmp_path / "ctor.pt"
    torch.save({"model": ConstructorPayload(tasks.DetectionModel, cfg)}, path)
    with pytest.raises(
        UnsafeCheckpointError, match=r"calls the constructor of ultralytics\.nn\.tasks\.Detect"
    ):
        load_ultralytics_checkpoint(path)
    assert not marker.exists()
    # second layer: a bare weights-only load with the model classes allowed calls the constructor, and
    # reparam's parse_model check refuses the activation text instead of evaluating it
    with (
        pytest.raises(ValueError, match="activation: .* is not an activation module"),
        torch.serialization.safe_globals([tasks.DetectionModel]),
    ):
        torch.load(path, weights_only=True)
    assert not marker.exists()


def test_trust_loads_an_unlisted_class(tmp_path):
    path = tmp_path / "h.pt"
    torch.save({"h": Harmless("x", 1)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"asks for checkpoint_payloads\.Harmless"):
        load_ultralytics_checkpoint(path)
    assert load_ultralytics_checkpoint(path, trust=True) == {"h": Harmless("x", 1)}


def test_ultralytics_safe_load_refuses_and_restores(files, tmp_path, monkeypatch):
    monkeypatch.delenv("ULTRALYTICS_SAFE_LOAD", raising=False)
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"model": SystemPayload(marker)}, evil)
    before = ul_utils.SAFE_LOAD, tasks.SAFE_LOAD
    with ultralytics_safe_load():
        assert tasks.SAFE_LOAD and os.environ["ULTRALYTICS_SAFE_LOAD"] == "1"
        with pytest.raises(TypeError, match="references types outside"):
            YOLO(evil)
        assert type(YOLO(files / "orepa.pt").model).__name__ == "DetectionModel"
        assert YOLO("yolov8n-orepa.yaml").model is not None  # building from a YAML still works
    assert not marker.exists()
    assert before == (ul_utils.SAFE_LOAD, tasks.SAFE_LOAD) and "ULTRALYTICS_SAFE_LOAD" not in os.environ
    with ultralytics_safe_load(trust=True):
        assert before == (ul_utils.SAFE_LOAD, tasks.SAFE_LOAD) and "ULTRALYTICS_SAFE_LOAD" not in os.environ


def test_deploy_checkpoint_refuses_malicious_file(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"model": SystemPayload(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match=r"asks for posix\.system, which can run code"):
        reparam.yolo.deploy_checkpoint(evil, tmp_path / "out.pt")
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]
