"""The shipped zoo YAMLs, checked in a wheel built from the repository (not in the source tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # skip Ultralytics' DNS probe at import: nothing may download

import pytest

pytest.importorskip("ultralytics")

from ultralytics.nn.tasks import DetectionModel

import reparam.yolo as ry

REPO = Path(__file__).resolve().parents[1]
YOLOV8N_OREPA_PARAMS = 4070801  # training form at nc=80, as in test_yolo_zoo.PARAMS_N


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel offline from a copy of the project (pip builds in-tree: build/ and egg-info)."""
    root = tmp_path_factory.mktemp("wheel")
    project = root / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, project / name)
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run([*pip, "-w", str(root / "dist"), str(project)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = (root / "dist").glob("reparam-*.whl")
    return built


@pytest.mark.slow
def test_wheel_ships_every_zoo_yaml_unchanged_and_it_builds(wheel: Path, tmp_path: Path) -> None:
    names = ry.zoo_names()
    assert len(names) == 11
    with zipfile.ZipFile(wheel) as zf:
        shipped = {Path(n).name: zf.read(n) for n in zf.namelist() if n.startswith("reparam/yolo/cfg/")}
        zf.extractall(tmp_path)
    assert sorted(shipped) == names
    for name in names:
        assert shipped[name] == (REPO / "src/reparam/yolo/cfg" / name).read_bytes(), name
    cfg = tmp_path / "reparam/yolo/cfg"
    model = DetectionModel(str(cfg / "yolov8n-orepa.yaml"), verbose=False)  # the family file, scale n
    assert Path(model.yaml["yaml_file"]).parent == cfg and model.yaml["scale"] == "n"
    assert sum(p.numel() for p in model.parameters()) == YOLOV8N_OREPA_PARAMS
