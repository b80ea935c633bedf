"""Ultralytics YAML registration and the model zoo: builds, exact parameter counts, widths, conversion."""

from __future__ import annotations

import collections
import copy
import functools
import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # skip Ultralytics' DNS probe at import: nothing may download

import pytest
import torch
import yaml

pytest.importorskip("ultralytics")

from ultralytics import YOLO
from ultralytics.nn import tasks
from ultralytics.nn.tasks import DetectionModel

import reparam.yolo as ry
from conftest import n_params
from reparam.convert import randomize_bn_
from reparam.io import checkpoint_globals

# family -> (training-form params, converted params) at scale n; the plain model it derives from and its
# fused params. RepVGG/QARepVGG/DBB/OREPA/EfficientRep-on-v6 models convert to EXACTLY the plain count.
PARAMS_N = {
    "yolov8-orepa.yaml": (4070801, 3151904),
    "yolov8-dbb.yaml": (3662671, 3151904),
    "yolov5-orepa.yaml": (4012192, 2649200),
    "yolo11-orepa.yaml": (3764753, 2616248),
    "yolov8-repvgg.yaml": (3201760, 3151904),
    "yolov8-qarepvgg.yaml": (3201760, 3151904),
    "yolov8-efficientrep.yaml": (4609376, 4265952),
    "yolov8-c2f-dynamicconv.yaml": (4576696, 4571400),
    "yolov10-dynamicconv.yaml": (2955372, 2479276),
    "yolov10-dynamicconv2.yaml": (4957048, 4481976),
    "yolov6-efficientrep.yaml": (4915904, 4495392),
}
PLAIN_FUSED_N = {
    "yolov8n.yaml": 3151904,
    "yolov5n.yaml": 2649200,
    "yolo11n.yaml": 2616248,
    "yolov10n.yaml": 2299264,
    "yolov6n.yaml": 4495392,
}
# scale n once per YOLO family and block signature (v10 ships n only), scale s for a "conv" and a
# "repeat" block
WIDTH_CASES = [
    *((f, "n") for f in ("yolov8-repvgg.yaml", "yolov5-orepa.yaml", "yolo11-orepa.yaml")),
    *((f, "n") for f in ("yolov8-efficientrep.yaml", "yolov8-c2f-dynamicconv.yaml")),
    ("yolov6-efficientrep.yaml", "n"),
    ("yolov8-orepa.yaml", "s"),
    ("yolov8-efficientrep.yaml", "s"),
]
# zoo families with the very same rows as their plain model (yolov6-efficientrep merges the neck's
# Conv + repeated Conv rows into one RepBlock row, so only its backbone and head inputs line up)
SAME_LAYOUT = {f for f, _ in WIDTH_CASES} - {"yolov6-efficientrep.yaml"}
SAME_AS_PLAIN = {
    "yolov8-repvgg.yaml",
    "yolov8-qarepvgg.yaml",
    "yolov8-dbb.yaml",
    "yolov8-orepa.yaml",
    "yolov5-orepa.yaml",
    "yolo11-orepa.yaml",
    "yolov6-efficientrep.yaml",
}


def scaled(family: str, scale: str) -> str:
    head, _, tail = family.partition("-")
    return f"{head}{scale}-{tail}"


@functools.cache
def _built(name: str) -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel(name, verbose=False)


def build(name: str) -> DetectionModel:
    """A fresh copy of the model built from ``name`` (each YAML is built once per session)."""
    return copy.deepcopy(_built(name))


def test_register_is_idempotent_and_lists_every_registered_block() -> None:
    from reparam.blocks.registry import registered_blocks

    names = ry.register()
    assert names == ry.register() == sorted(registered_blocks())
    assert {"RepVGGBlock", "QARepVGGBlock", "RepBlock", "DynamicConv", "BiC"} <= set(names)


def test_zoo_ships_every_family_with_a_known_plain_counterpart() -> None:
    assert set(ry.zoo_names()) == set(PARAMS_N), "update PARAMS_N when adding a zoo YAML"
    assert ry.plain_counterpart("yolov8n-orepa.yaml") == "yolov8n.yaml"
    assert ry.plain_counterpart("yolo11s-orepa.yaml") == "yolo11s.yaml"
    assert ry.plain_counterpart("yolov10n-dynamicconv2.yaml") == "yolov10n.yaml"
    with pytest.raises(ValueError, match="not a reparam zoo model"):
        ry.plain_counterpart("yolov8n.yaml")


@pytest.mark.parametrize("family", sorted(PARAMS_N))
def test_zoo_model_builds_by_scaled_name_and_converts_to_exact_counts(family: str) -> None:
    name = scaled(family, "n")
    model = build(name)
    assert model.yaml["scale"] == "n"
    train_params, deploy_params = PARAMS_N[family]
    assert n_params(model) == train_params
    assert not model.is_fused()
    model.eval()
    randomize_bn_(model, seed=1)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)[0]
        assert ry.convert_model(model) is model
        out = model(x)[0]
    assert model.is_fused() and ry.pending_blocks(model) == []
    assert n_params(model) == deploy_params
    plain = ry.plain_counterpart(name)
    if family == "yolov6-efficientrep.yaml":  # YOLOv6's ReLU, from the YAML's activation key
        assert {type(m) for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.SiLU))} == {
            torch.nn.ReLU
        }
    if family in SAME_AS_PLAIN:
        assert deploy_params == PLAIN_FUSED_N[plain]
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert rel < 1e-4, f"converted {name} differs from its training form: max rel {rel:.2e}"


def test_plain_fused_counts_match_ultralytics() -> None:
    for plain, count in PLAIN_FUSED_N.items():
        model = build(plain).eval().fuse(verbose=False)
        assert n_params(model) == count


def _layer_channels(name: str) -> list[int]:
    """Output channels of every layer but the head, from a parse-only build run at 64 px (no stride pass)."""
    layers, save = tasks.parse_model(copy.deepcopy(tasks.yaml_model_load(name)), ch=3, verbose=False)
    shell = tasks.BaseModel()
    shell.model, shell.save = layers, save
    chans: list[int] = []
    for m in layers[:-1]:
        m.register_forward_hook(lambda _m, _i, out: chans.append(out.shape[1]))
    with torch.no_grad():
        shell._predict_once(torch.zeros(1, 3, 64, 64))
    return chans


def _detect_inputs(name: str) -> list[int]:
    d = tasks.yaml_model_load(name)
    layers, _ = tasks.parse_model(copy.deepcopy(d), ch=3, verbose=False)
    return [m.in_channels for m in layers[-1].cv2.modules() if isinstance(m, torch.nn.Conv2d)][::3]


@pytest.mark.parametrize(("family", "scale"), WIDTH_CASES)
def test_zoo_widths_equal_the_builtin_model(family: str, scale: str) -> None:
    name, plain = scaled(family, scale), ry.plain_counterpart(scaled(family, scale))
    ours, theirs = _layer_channels(name), _layer_channels(plain)
    depth = len(tasks.yaml_model_load(name)["backbone"])
    assert ours[:depth] == theirs[:depth]
    if family in SAME_LAYOUT:
        assert ours == theirs
    assert _detect_inputs(name) == _detect_inputs(plain)


def _write_yaml(tmp_path, rows: list, name: str = "custom.yaml") -> str:
    cfg = {"nc": 3, "scales": {"n": [0.33, 0.25, 1024]}, "backbone": rows[:-1], "head": rows[-1:]}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_repeat_signature_gets_depth_scaled_n_and_width_scaled_c2(tmp_path) -> None:
    path = _write_yaml(
        tmp_path,
        [
            [-1, 1, "RepVGGBlock", [64, 3, 2]],
            [-1, 1, "ConvBNAct", [2048, 3, 2]],  # capped at max_channels=1024, then * 0.25
            [-1, 9, "RepBlock", [128, "QARepVGGBlock"]],
            [[-1], 1, "Detect", ["nc"]],
        ],
    )
    model = build(path)
    l0, l1, l2 = model.model[0], model.model[1], model.model[2]
    assert (l0.c1, l0.c2) == (3, 16)
    assert l1.conv.out_channels == 256
    assert len(l2.block) + 1 == 3  # round(9 * 0.33) = 3 basic blocks
    assert type(l2.conv1).__name__ == "QARepVGGBlock" and l2.conv1.c2 == 32


def test_custom_block_bic_gets_the_channels_of_every_input(tmp_path) -> None:
    path = _write_yaml(
        tmp_path,
        [
            [-1, 1, "Conv", [64, 3, 2]],  # 0: 16 ch, /2
            [-1, 1, "Conv", [128, 3, 2]],  # 1: 32 ch, /4
            [-1, 1, "Conv", [256, 3, 2]],  # 2: 64 ch, /8
            [[2, 1, 0], 1, "BiC", [128]],  # top /8, same /4, lower /2 -> 32 ch at /4
            [-1, 1, "Conv", [128, 3, 2]],
            [[-1], 1, "Detect", ["nc"]],
        ],
    )
    model = build(path)
    bic = model.model[3]
    assert (bic.upsample.upsample_transpose.in_channels, bic.cv1.conv.in_channels) == (64, 32)
    assert (bic.cv2.conv.in_channels, bic.cv3.conv.out_channels) == (16, 32)


def test_unknown_block_error_names_the_yaml_row(tmp_path) -> None:
    path = _write_yaml(
        tmp_path, [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "RepVGGBlok", [64]], [[-1], 1, "Detect", ["nc"]]]
    )
    with pytest.raises(
        ValueError, match=r"model YAML row 1 of .*custom.yaml \[-1, 1, 'RepVGGBlok', \[64\]\]: unknown"
    ):
        build(path)


def test_misused_block_error_names_the_yaml_row_and_the_rule(tmp_path) -> None:
    path = _write_yaml(tmp_path, [[-1, 1, "RepVGGBlock", [64, 4, 2]], [[-1], 1, "Detect", ["nc"]]])
    with pytest.raises(ValueError, match=r"row 0 .*'RepVGGBlock', \[64, 4, 2\]\].*k=4 must be odd"):
        build(path)
    path = _write_yaml(
        tmp_path, [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "BiC", [64]], [[-1], 1, "Detect", ["nc"]]]
    )
    with pytest.raises(ValueError, match=r"row 1 .*'BiC'.*'from' must list the input layers"):
        build(path)


def test_live_training_model_is_never_converted_by_a_fuse_of_a_copy() -> None:
    model = build("yolov8n-repvgg.yaml")
    fused = copy.deepcopy(model).eval().fuse(verbose=False)
    assert fused.is_fused() and not model.is_fused()
    assert ry.pending_blocks(model) == ["model.0", "model.1", "model.3", "model.5", "model.7"]


def _op_counts(path) -> collections.Counter:
    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _perturbed(name: str) -> YOLO:
    """A YOLO model with random BN statistics and distinct weights, as after training."""
    model = YOLO(name)
    randomize_bn_(model.model, seed=3)
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    return model


@pytest.mark.parametrize("name", ["yolov8n-orepa.yaml", "yolov8n-dbb.yaml"])
def test_onnx_export_of_orepa_and_dbb_equals_plain_graph_and_training_output(
    name: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)  # YAML-built models export into the working directory
    model = _perturbed(name)
    reference = copy.deepcopy(model.model).eval()
    exported = model.export(format="onnx", imgsz=64, simplify=False, device="cpu")
    assert ry.pending_blocks(model.model) != [], "export must convert a copy, not the user's model"
    plain = _perturbed(ry.plain_counterpart(name)).export(
        format="onnx", imgsz=64, simplify=False, device="cpu"
    )
    assert _op_counts(exported) == _op_counts(plain)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        ref = reference(x)[0]
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4


def test_deploy_checkpoint_refuses_dynamicconv_models_unless_asked(tmp_path) -> None:
    model = build("yolov10n-dynamicconv.yaml")
    src = tmp_path / "dyn.pt"
    torch.save({"model": model, "ema": None, "train_args": {}}, src)
    with pytest.raises(ValueError, match=r"DynamicConv.*needs reparam at load time.*standalone=False"):
        ry.deploy_checkpoint(src, tmp_path / "dyn-deploy.pt")
    out = ry.deploy_checkpoint(src, tmp_path / "dyn-deploy.pt", standalone=False)
    deployed = torch.load(out, map_location="cpu", weights_only=False)["model"]
    assert deployed.is_fused() and ry.pending_blocks(deployed) == []
    assert [r[2] for r in deployed.yaml["backbone"][:2]] == ["Conv", "DynamicConv"]


@pytest.mark.parametrize("name", ["yolov6n-efficientrep.yaml", "yolov8n-orepa.yaml", "yolov8n-dbb.yaml"])
def test_deploy_checkpoint_is_stock_only_and_equal(name: str, tmp_path) -> None:
    model = build(name).eval()
    randomize_bn_(model, seed=5)
    src = tmp_path / "train.pt"
    torch.save({"model": model, "ema": None, "train_args": {}}, src)
    out = ry.deploy_checkpoint(src)
    assert out == tmp_path / "train-deploy.pt"
    globals_ = checkpoint_globals(out)  # every global the file names, allow-listed or not
    assert globals_ and not [g for g in globals_ if g.startswith("reparam")]
    deployed = torch.load(out, map_location="cpu", weights_only=False)["model"]
    assert n_params(deployed) == PARAMS_N[ry.zoo_path(name).name][1]
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref, got = model(x)[0], deployed(x)[0]
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4


# one YAML row per registered block (c2 before the 0.25 width scaling); a new block needs a row here
EVERY_BLOCK_ROWS = [
    [-1, 1, "ConvBNAct", [64, 3, 2]],  # 0: 16 ch /2
    [-1, 1, "RepVGGBlock", [64, 3, 1]],
    [-1, 1, "QARepVGGBlock", [128, 3, 2]],  # 2: 32 ch /4
    [-1, 1, "DBB", [128, 3, 1]],
    [-1, 1, "OREPA", [128, 3, 1]],
    [-1, 1, "OREPA_1x1", [128, 1, 1]],
    [-1, 1, "OREPA_LargeConv", [128, 5, 1]],
    [-1, 1, "OREPARepVGG", [128, 3, 1]],
    [-1, 3, "RepBlock", [128]],
    [-1, 1, "BottleRep", [128]],
    [-1, 3, "BepC3", [128]],
    [-1, 1, "DynamicConv", [256, 3, 2]],  # 11: 64 ch /8
    [-1, 1, "DynamicConvBNAct", [256, 3, 1]],
    [-1, 1, "Bottleneck_DynamicConv", [256]],
    [-1, 3, "C2f_DynamicConv", [256, True]],
    [-1, 1, "SimSPPF", [256, 5]],
    [-1, 1, "SimCSPSPPF", [256, 5]],
    [-1, 1, "Transpose", [128]],  # 17: 32 ch /4
    [[11, 17, 0], 1, "BiC", [128]],  # top /8, same /4, lower /2 -> 32 ch /4
    [[-1], 1, "Detect", ["nc"]],
]


def test_every_registered_block_builds_from_a_yaml_row_and_converts(tmp_path) -> None:
    from reparam.blocks.registry import registered_blocks

    assert {row[2] for row in EVERY_BLOCK_ROWS[:-1]} == set(registered_blocks())
    model = build(_write_yaml(tmp_path, EVERY_BLOCK_ROWS, name="every.yaml")).eval()
    randomize_bn_(model, seed=7)
    assert model.model[8].conv1.c2 == 32 and len(model.model[8].block) == 0  # n = max(round(3 * 0.33), 1)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = model(x)[0]
        out = ry.convert_model(model)(x)[0]
    assert model.is_fused() and ry.pending_blocks(model) == []
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4
