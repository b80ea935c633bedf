"""Ultralytics YAML conventions through public entry points: activation key, per-row act, live registration,
unknown-name errors, tracebacks through the patched parse_model, loud weight transfer, no file at import."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback

os.environ.setdefault("YOLO_OFFLINE", "1")  # skip Ultralytics' DNS probe at import: nothing may download

import pytest
import torch
import yaml
from torch import nn

pytest.importorskip("ultralytics")

from ultralytics.nn import tasks
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER

import reparam.yolo  # noqa: F401  (registers the blocks)
from reparam.blocks import registry
from reparam.blocks.act import resolve_act
from reparam.blocks.registry import register_block, registered_blocks
from reparam.yolo.integration import PATCHED_FILENAME, patch_parse_model

DETECT = [[-1], 1, "Detect", ["nc"]]


def write_yaml(tmp_path, rows: list, activation: str | None = None, name: str = "m.yaml") -> str:
    """A two-class scale-n model YAML with ``rows`` as backbone and a Detect head on the last row."""
    cfg: dict = {"nc": 2, "scales": {"n": [0.33, 0.25, 1024]}, "backbone": rows, "head": [DETECT]}
    if activation is not None:
        cfg["activation"] = activation
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def build(path: str) -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel(path, verbose=False)


def act_types(model: nn.Module) -> set[type]:
    """Types of every activation module in ``model`` (Identity excluded)."""
    classes = (nn.ReLU, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.GELU)
    return {type(m) for m in model.modules() if isinstance(m, classes)}


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks registered by a test disappear from the registry (and from YAML builds) after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


MIXED_ROWS = [
    [-1, 1, "Conv", [64, 3, 2]],
    [-1, 1, "RepVGGBlock", [64, 3, 2]],
    [-1, 1, "OREPA", [64, 3, 1]],
    [-1, 2, "RepBlock", [64]],
    [-1, 1, "DBB", [64, 3, 1]],
    [-1, 1, "SimSPPF", [64, 5]],
    [-1, 1, "C2f", [64, True]],
]


def test_yaml_activation_key_reaches_every_reparam_block_and_conv(tmp_path) -> None:
    model = build(write_yaml(tmp_path, MIXED_ROWS, activation="nn.ReLU()"))
    assert act_types(model) == {nn.ReLU}
    for layer in model.model[1:6]:  # every reparam row, containers included
        assert [type(m.act) for m in layer.modules() if hasattr(m, "act")] != []
        assert all(type(m.act) is nn.ReLU for m in layer.modules() if hasattr(m, "act"))
    # the next model without the key is SiLU throughout, reparam blocks and Conv alike
    assert act_types(build(write_yaml(tmp_path, MIXED_ROWS, name="plain.yaml"))) == {nn.SiLU}


def test_yaml_activation_key_accepts_leaky_relu_with_its_argument(tmp_path) -> None:
    model = build(write_yaml(tmp_path, MIXED_ROWS[:3], activation="nn.LeakyReLU(0.1)"))
    leaky = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert act_types(model) == {nn.LeakyReLU} and {m.negative_slope for m in leaky} == {0.1}


@pytest.mark.parametrize(
    ("act", "expected"),
    [("relu", nn.ReLU), ("nn.ReLU()", nn.ReLU), (False, nn.Identity), ("silu", nn.SiLU), (True, nn.ReLU)],
)
def test_row_level_act_as_users_write_it(tmp_path, act: object, expected: type) -> None:
    rows = [
        [-1, 1, "Conv", [64, 3, 2]],
        [-1, 1, "RepVGGBlock", [64, 3, 2, None, 1, 1, act]],
        [-1, 2, "RepBlock", [64, "RepVGGBlock", act]],
        [-1, 1, "ConvBNAct", [64, 3, 1, None, 1, 1, act]],
    ]
    model = build(write_yaml(tmp_path, rows, activation="nn.ReLU()"))
    assert type(model.model[0].act) is nn.ReLU  # the model's activation for Conv
    assert type(model.model[1].act) is expected
    assert {type(b.act) for b in [model.model[2].conv1, *model.model[2].block]} == {expected}
    assert type(model.model[3].act) is expected


def test_a_block_registered_after_import_is_usable_in_the_next_build(tmp_path, scratch_registry) -> None:
    class LateConv(nn.Module):
        def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, act: object = True) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2)
            self.act = resolve_act(act)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(x))

    register_block("conv")(LateConv)  # no ry.register() afterwards
    rows = [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "LateConv", [128, 3, 2]], [-1, 1, "LateConv", [128]]]
    model = build(write_yaml(tmp_path, rows, activation="nn.ReLU()"))
    late = model.model[1]
    assert type(late) is LateConv and late.type.endswith("LateConv")
    assert (late.conv.in_channels, late.conv.out_channels, late.conv.stride) == (16, 32, (2, 2))
    assert type(late.act) is nn.ReLU  # registered blocks follow the model's activation too
    with pytest.raises(ValueError, match=r"row 2 .*'LateConvv'.*did you mean LateConv\?"):
        build(write_yaml(tmp_path, [*rows[:2], [-1, 1, "LateConvv", [128]]], name="typo.yaml"))


def test_a_block_unregistered_again_is_unknown_and_not_listed(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_block("conv", name="Gone")(nn.Conv2d)
    path = write_yaml(tmp_path, [[-1, 1, "Gone", [64, 3, 2]]])
    assert type(build(path).model[0]) is nn.Conv2d
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown module 'Gone'") as err:
        build(path)
    listed = str(err.value).split("reparam blocks: ")[1].split(", ")
    assert "Gone" not in listed and set(listed) == set(registered_blocks())


def test_unknown_name_suggests_the_closest_reparam_block(tmp_path) -> None:
    rows = [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "RepVGGBlok", [64]]]
    with pytest.raises(ValueError) as err:
        build(write_yaml(tmp_path, rows, name="custom.yaml"))
    assert str(err.value) == (
        f"model YAML row 1 of {tmp_path / 'custom.yaml'} [-1, 1, 'RepVGGBlok', [64]]: unknown module "
        "'RepVGGBlok': neither an Ultralytics module nor a registered reparam block; "
        "did you mean RepVGGBlock?"
    )


def test_orepaconv_of_the_post_points_to_the_papers_orepa(tmp_path) -> None:
    with pytest.raises(ValueError) as err:
        build(write_yaml(tmp_path, [[-1, 1, "OREPAConv", [64, 3, 2]]]))
    assert str(err.value).endswith(
        "[-1, 1, 'OREPAConv', [64, 3, 2]]: OREPAConv: did you mean OREPA? the post's OREPAConv is not the "
        "paper's block (a ReLU inside a branch, unfusable); reparam's OREPA is the paper's"
    )


def test_orepa_rows_build_through_the_registry_factory(tmp_path) -> None:
    rows = [[-1, 1, "OREPA", [64, 3, 2]], [-1, 1, "OREPA", [64, 1, 1]]]
    model = build(write_yaml(tmp_path, rows))
    assert [type(m).__name__ for m in model.model[:2]] == ["OREPA", "OREPA_1x1"]
    assert model.model[1].type == "reparam.blocks.orepa.OREPA"  # the YAML name, as Ultralytics records it


def test_traceback_through_the_patched_parse_model_shows_its_source(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"row 0 .*k=4 must be odd") as err:
        build(write_yaml(tmp_path, [[-1, 1, "RepVGGBlock", [64, 4, 2]]]))
    text = "".join(traceback.format_exception(err.value))
    frame = text.split(f'File "{PATCHED_FILENAME}", line ')[1]
    assert frame.splitlines()[1].strip().startswith("m_ = torch.nn.Sequential(*(_reparam_builders.get(m, m)(")


def test_patching_an_unknown_parse_model_layout_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse_model(d, ch, verbose=True):
        return d, ch

    monkeypatch.setattr(tasks, "parse_model", parse_model)
    monkeypatch.setattr(tasks, "_reparam_original_parse_model", None)
    with pytest.raises(RuntimeError, match=r"ultralytics 8\.\d+\.\d+: parse_model no longer .*base_modules"):
        patch_parse_model()


def test_custom_block_without_a_yaml_rule_is_refused(tmp_path, scratch_registry) -> None:
    register_block("custom", name="Nope")(nn.Identity)
    with pytest.raises(RuntimeError, match="custom block 'Nope' has no Ultralytics YAML rule"):
        build(write_yaml(tmp_path, [[-1, 1, "Conv", [64, 3, 2]]]))


def test_weight_transfer_names_the_reparam_blocks_it_skips(tmp_path, monkeypatch) -> None:
    rows = [
        [-1, 1, "Conv", [64, 3, 2]],
        [-1, 1, "RepVGGBlock", [128, 3, 2]],
        [-1, 1, "DynamicConv", [128, 3, 1]],
    ]
    model = build(write_yaml(tmp_path, rows))
    other = [rows[0], [-1, 1, "RepVGGBlock", [256, 3, 2]], [-1, 1, "Conv", [128, 3, 1]]]
    source = build(write_yaml(tmp_path, other, name="other.yaml"))
    warnings: list[str] = []
    monkeypatch.setattr(LOGGER, "warning", warnings.append)
    model.load(source, verbose=False)
    assert len(warnings) == 1, "one warning, also when not verbose"
    skipped_dyn = len(model.model[2].state_dict())
    assert warnings[0].startswith(f"reparam: the pretrained weights skip {10 + skipped_dyn} tensors of 2 ")
    # RepVGGBlock s=2: dense and 1x1 branches, conv weight + 4 BN tensors each change with c2
    assert (
        "model.1 (layer 1 RepVGGBlock): 10 tensors (model.1.rbr_dense.conv.weight: shape (64, 16, 3, 3) vs "
        "(32, 16, 3, 3), model.1.rbr_dense.bn.weight: shape (64,) vs (32,)"
    ) in warnings[0]
    assert f"model.2 (layer 2 DynamicConv): {skipped_dyn} tensors (model.2." in warnings[0]
    assert "missing" in warnings[0].split("model.2 (layer 2")[1]
    same = build(write_yaml(tmp_path, rows))
    warnings.clear()
    model.load({"model": same}, verbose=False)
    assert warnings == []


def test_importing_the_plugin_writes_no_file(tmp_path) -> None:
    code = (
        "import os, pathlib, ultralytics\n"
        "snap = lambda: sorted(str(p) for p in pathlib.Path(os.environ['YOLO_CONFIG_DIR']).rglob('*'))\n"
        "before = snap(), sorted(os.listdir('.'))\n"
        "import reparam.yolo\n"
        "assert (snap(), sorted(os.listdir('.'))) == before, (before, snap())\n"
    )
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "cfg"), "YOLO_OFFLINE": "1"}
    (tmp_path / "work").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path / "work", env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
