"""End to end with Ultralytics on CPU: one short training run, then val, predict, export, deploy, DDP.

One training run (module fixture) feeds every test; images are 64 px from the generated dataset.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # skip Ultralytics' DNS probe at import: nothing may download

import onnx
import onnxruntime as ort
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import BaseModel

import reparam.yolo as ry
from conftest import rel_err
from reparam.data.synthetic import make_synthetic_dataset

IMGSZ = 64
MODEL = "yolov8n-repvgg.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train MODEL for one epoch; records every fuse() call made by Ultralytics meanwhile."""
    root = tmp_path_factory.mktemp("yolo")
    data = make_synthetic_dataset(root / "data", n_train=8, n_val=4, imgsz=IMGSZ)
    fused: list[dict] = []
    original = BaseModel.fuse

    def spy(self: BaseModel, *args, **kwargs):
        pending_before = len(ry.pending_blocks(self))
        out = original(self, *args, **kwargs)
        fused.append({"id": id(self), "before": pending_before, "after": ry.pending_blocks(self)})
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BaseModel, "fuse", spy)
        model = YOLO(MODEL)
        model.train(
            data=str(data), epochs=1, imgsz=IMGSZ, batch=4, workers=0, device="cpu", amp=False,
            plots=False, project=str(root / "runs"), name="train", trainer=ry.ReparamDetectionTrainer,
            verbose=False, seed=0,
        )  # fmt: skip
    trainer = model.trainer
    weights = Path(trainer.save_dir) / "weights"
    return {"root": root, "data": data, "trainer": trainer, "fused": fused, "weights": weights}


def test_trainer_is_ours_and_final_val_converted_a_loaded_copy(trained: dict) -> None:
    trainer = trained["trainer"]
    assert isinstance(trainer, ry.ReparamDetectionTrainer)
    live = {id(trainer.model), id(trainer.ema.ema)}
    final = [c for c in trained["fused"] if c["before"] > 0]
    assert final, "the final validation never fused a model holding reparam blocks"
    assert all(c["after"] == [] and c["id"] not in live for c in final)
    assert len(ry.pending_blocks(trainer.ema.ema)) == 5  # live EMA stays in training form
    assert len(ry.pending_blocks(trainer.model)) == 5


def test_training_checkpoint_keeps_training_form(trained: dict) -> None:
    ckpt = torch.load(trained["weights"] / "last.pt", map_location="cpu", weights_only=False)
    assert len(ry.pending_blocks(ckpt["model"])) == 5
    assert not ckpt["model"].is_fused()


def _image_tensor(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


def _train_form(weights: Path) -> torch.nn.Module:
    return YOLO(weights).model.float().eval()


def test_predict_and_val_convert_automatically_and_match(trained: dict) -> None:
    best = trained["weights"] / "best.pt"
    model = YOLO(best)
    reference = copy.deepcopy(model.model).float().eval()
    image = next((trained["root"] / "data" / "images" / "val").glob("*.png"))
    results = model.predict(str(image), imgsz=IMGSZ, device="cpu", verbose=False, save=False)
    assert len(results) == 1
    served = model.predictor.model.backend.model
    assert served.is_fused() and ry.pending_blocks(served) == []
    x = _image_tensor()
    with torch.no_grad():
        assert rel_err(served(x)[0], reference(x)[0]) < 1e-4
    from reparam.app.demo import load_unfused

    def val(net: YOLO) -> tuple[float, float]:
        box = net.val(
            data=str(trained["data"]), imgsz=IMGSZ, batch=4, device="cpu", plots=False, verbose=False,
            project=str(trained["root"] / "runs"), name="val", exist_ok=True,
        ).box  # fmt: skip
        return box.map50, box.map

    # val converts automatically and scores exactly what the unconverted training form scores
    assert val(YOLO(best)) == pytest.approx(val(load_unfused(best, trust=False)), abs=1e-3)


def _op_counts(path: Path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_onnx_export_converts_matches_plain_graph_and_training_output(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a YAML-built model exports next to the working directory
    best = trained["weights"] / "best.pt"
    exported = Path(YOLO(best).export(format="onnx", imgsz=IMGSZ, simplify=False, device="cpu"))
    plain_model = YOLO("yolov8n.yaml")
    with (
        torch.no_grad()
    ):  # distinct constants, as after training: the exporter turns equal ones into Identity
        for p in plain_model.model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    plain = Path(plain_model.export(format="onnx", imgsz=IMGSZ, simplify=False, device="cpu"))
    assert _op_counts(exported) == _op_counts(plain)
    x = _image_tensor(1)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})[:1]
    with torch.no_grad():
        torch_out = _train_form(best)(x)[0]
    assert rel_err(torch.from_numpy(onnx_out), torch_out) < 1e-4


def _run_python(code: str, env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "1", **env_extra}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=240
    )


_STANDALONE = """
import json, sys, torch
from ultralytics import YOLO
model = YOLO(sys.argv[1] if len(sys.argv) > 1 else {ckpt!r})
x = torch.load({x!r})
with torch.no_grad():
    out = model.model.float().eval()(x)[0]
torch.save(out, {out!r})
results = model.predict({image!r}, imgsz={imgsz}, device="cpu", verbose=False, save=False)
print(json.dumps({{"reparam": sorted(m for m in sys.modules if m.split(".")[0] == "reparam"),
                  "fused": model.model.is_fused(), "n_results": len(results)}}))
"""


def test_deploy_checkpoint_loads_without_reparam_and_keeps_the_source(trained: dict, tmp_path: Path) -> None:
    best = trained["weights"] / "best.pt"
    digest = hashlib.sha256(best.read_bytes()).hexdigest()
    deploy = ry.deploy_checkpoint(best, tmp_path / "deploy.pt")
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest
    assert not [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(deploy) if "reparam" in g]
    with pytest.raises(ValueError, match="dst must differ from src"):
        ry.deploy_checkpoint(best, best)

    x = _image_tensor(2)
    torch.save(x, tmp_path / "x.pt")
    image = next((trained["root"] / "data" / "images" / "val").glob("*.png"))
    code = _STANDALONE.format(
        ckpt=str(deploy),
        x=str(tmp_path / "x.pt"),
        out=str(tmp_path / "out.pt"),
        image=str(image),
        imgsz=IMGSZ,
    )
    proc = _run_python(code, {"ULTRALYTICS_SAFE_LOAD": "1"}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"reparam": [], "fused": True, "n_results": 1}
    with torch.no_grad():
        reference = _train_form(best)(x)[0]
    assert rel_err(torch.load(tmp_path / "out.pt"), reference) < 1e-4


def test_safe_load_allows_reparam_training_checkpoints(trained: dict, tmp_path: Path) -> None:
    code = (
        "import reparam.yolo, sys\n"
        "from ultralytics.nn.tasks import torch_safe_load\n"
        f"ckpt, _ = torch_safe_load({str(trained['weights'] / 'last.pt')!r}, safe_only=True)\n"
        "print(type(ckpt['model'].model[0]).__name__)\n"
    )
    proc = _run_python(code, {"ULTRALYTICS_SAFE_LOAD": "1"}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "RepVGGBlock"


_DDP_DRIVER = """
import runpy, sys
from ultralytics.engine.trainer import BaseTrainer

def train(self):
    from ultralytics.nn.tasks import DetectionModel
    fresh = DetectionModel(self.model.yaml, verbose=False)  # the YAML parse a DDP worker runs
    blocks = sorted({type(m).__name__ for m in fresh.modules() if type(m).__module__.startswith("reparam.")})
    print("DDP-OK", type(self).__module__, ",".join(blocks))

BaseTrainer.train = train
assert "reparam" not in sys.modules
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def test_ddp_script_imports_our_trainer_and_builds_the_model(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DDP worker script Ultralytics generates imports and builds: run in a fresh process (reparam not
    yet imported), it imports reparam's trainer and parses the model YAML into reparam's blocks. Its
    ``BaseTrainer.train`` is replaced, so no distributed training runs here (tests/test_distributed.py
    trains with 2 gloo processes)."""
    import ultralytics.utils.checks as checks
    from ultralytics.utils.dist import generate_ddp_file

    monkeypatch.setattr(checks, "check_requirements", lambda *a, **k: True)  # DDP asks for cloudpickle>=3.1.1
    script = Path(generate_ddp_file(trained["trainer"]))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _DDP_DRIVER, str(script)], capture_output=True, text=True, cwd=tmp_path,
            env={**os.environ, "YOLO_OFFLINE": "1"}, timeout=240,
        )  # fmt: skip
    finally:
        script.unlink(missing_ok=True)
        script.with_suffix(".pt").unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "DDP-OK reparam.yolo.trainer ConvBN,RepVGGBlock"


def test_train_starts_from_a_legacy_pretrained_file(trained: dict, tmp_path: Path) -> None:
    """A legacy (non-zip) ``pretrained=`` file, which Ultralytics' safe mode cannot read, is read by reparam
    (checked, no code run) and handed to Ultralytics for that path only: with no learning the weights stay."""
    from reparam.app.train import train

    net = YOLO("yolov8n.yaml")
    with torch.no_grad():
        net.model.model[0].conv.weight.fill_(0.5)
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": net.model, "train_args": {}}, legacy, _use_new_zipfile_serialization=False)
    result = train(
        "yolov8n.yaml", data=trained["data"], epochs=1, imgsz=IMGSZ, batch=4, project=tmp_path, workers=0,
        plots=False, pretrained=str(legacy), optimizer="SGD", lr0=0.0, warmup_bias_lr=0.0, seed=0,
    )  # fmt: skip
    first = torch.load(result.best, weights_only=False)["model"].model[0].conv.weight.float()  # the EMA
    assert torch.equal(first, torch.full_like(first, 0.5))
