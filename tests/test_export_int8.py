"""``reparam export int8=True``, ``reparam val`` and atomic export on a tiny QARepVGG detector at 64 px.

The INT8 file is checked against the graph itself (QDQ nodes present, nothing after the head's last convs
quantized), the plain graph against the converted PyTorch model (one Conv per conv module), the sensitivity
ranking against the INT8 graph it produced (the top layer really stays float), and every bad input exits 2
with one line and writes nothing."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
cv2 = pytest.importorskip("cv2")

from reparam.app.export import export_model  # noqa: E402
from reparam.cli import main  # noqa: E402
from reparam.yolo import convert_model  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = """nc: 2
backbone:
  - [-1, 1, QARepVGGBlock, [8, 3, 2]]
  - [-1, 1, QARepVGGBlock, [16, 3, 2]]
  - [-1, 1, QARepVGGBlock, [16, 3, 2]]
  - [-1, 1, QARepVGGBlock, [32, 3, 2]]
  - [-1, 1, QARepVGGBlock, [32, 3, 2]]
head:
  - [[2, 3, 4], 1, Detect, [nc]]
"""
HEAD = "/model.5/"


def _images(folder: Path, n: int, size: tuple[int, int] = (80, 100)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = np.random.default_rng(i).random((*size, 3)) * 255
        cv2.imwrite(str(folder / f"{i}.jpg"), cv2.GaussianBlur(im.astype(np.uint8), (9, 9), 3))
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model YAML, calibration images, a labelled data set and one INT8 export (auto:1 ranking)."""
    root = tmp_path_factory.mktemp("int8")
    yaml_path = root / "tiny.yaml"
    yaml_path.write_text(TINY)
    calib = _images(root / "calib", 6)
    ds = root / "ds"
    _images(ds / "images" / "val", 3, (64, 64))
    (ds / "labels" / "val").mkdir(parents=True)
    for i in range(3):
        (ds / "labels" / "val" / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.3\n1 0.3 0.3 0.2 0.2\n")
    (ds / "data.yaml").write_text(f"path: {ds}\ntrain: images/val\nval: images/val\nnames: {{0: a, 1: b}}\n")
    out = root / "export" / "m.onnx"
    args = ["export", str(yaml_path), "imgsz=64", "int8=True", f"calib={calib}", "int8_skip=auto:1"]
    assert main([*args, f"out={out}"]) == 0
    return {"root": root, "yaml": yaml_path, "calib": calib, "data": ds / "data.yaml", "fp32": out,
            "int8": out.with_name("m.int8.onnx"), "csv": out.with_name("m.int8-sensitivity.csv")}  # fmt: skip


def _producers(graph) -> dict[str, object]:
    return {o: n for n in graph.node for o in n.output}


def _decode(graph) -> list:
    """The head's nodes outside its conv branches (cv2 boxes, cv3 classes): DFL, box arithmetic, concat."""
    return [
        n for n in graph.node if n.name.startswith(HEAD) and "/cv2" not in n.name and "/cv3" not in n.name
    ]


def test_int8_file_is_qdq_of_the_plain_graph(work: dict[str, Path]) -> None:
    from ultralytics.nn.tasks import DetectionModel

    deploy = convert_model(DetectionModel(str(work["yaml"]), verbose=False).eval())
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in deploy.modules())
    fp32 = [n.op_type for n in onnx.load(work["fp32"]).graph.node]
    int8 = [n.op_type for n in onnx.load(work["int8"]).graph.node]
    assert fp32.count("Conv") == convs  # one Conv per conv of the converted model: no branch survives
    assert int8.count("Conv") == convs and int8.count("QuantizeLinear") > convs // 2
    assert int8.count("DequantizeLinear") > convs  # weights and activations


def test_decode_stays_float(work: dict[str, Path]) -> None:
    graph = onnx.load(work["int8"]).graph
    producers = _producers(graph)
    decode = _decode(graph)
    assert {"Softmax", "Sigmoid", "Concat"} <= {n.op_type for n in decode}
    consumers = {i: n for n in graph.node for i in n.input}
    for node in decode:
        assert all(consumers.get(o) is None or consumers[o].op_type != "QuantizeLinear" for o in node.output)
        if node.op_type in ("Softmax", "Sigmoid", "Concat", "Add", "Sub", "Mul", "Div"):
            assert all(producers[i].op_type != "DequantizeLinear" for i in node.input if i in producers)
    assert producers[graph.output[0].name].op_type == "Concat"


def _float_convs(path: Path) -> set[str]:
    """Conv nodes whose weight is a plain initializer (not dequantized): the ones left in float."""
    graph = onnx.load(path).graph
    producers = _producers(graph)
    return {n.name for n in graph.node if n.op_type == "Conv" and n.input[1] not in producers}


def test_sensitivity_ranking_and_auto_skip(work: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    rows = list(csv.DictReader(work["csv"].open()))
    fp32_convs = [n.name for n in onnx.load(work["fp32"]).graph.node if n.op_type == "Conv"]
    assert {r["node"] for r in rows} == {c for c in fp32_convs if "/dfl/" not in c}
    errors = [float(r["output_error"]) for r in rows]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    assert [r["kept_float"] for r in rows].count("True") == 1
    assert _float_convs(work["int8"]) == {rows[0]["node"], f"{HEAD}dfl/conv/Conv"}


def _weight_scale_sizes(path: Path) -> set[int]:
    """Number of scales of each quantized conv weight (its output channels per channel, 1 per tensor)."""
    graph = onnx.load(path).graph
    inits, producers = {i.name: i for i in graph.initializer}, _producers(graph)
    dq = [producers[n.input[1]] for n in graph.node if n.op_type == "Conv" and n.input[1] in producers]
    return {int(np.prod(inits[d.input[1]].dims)) for d in dq}


def test_named_skip_keeps_those_convs_float_and_per_tensor(work: dict[str, Path]) -> None:
    names = ["/model.0/conv/Conv", "/model.4/conv/Conv"]
    out = work["root"] / "named" / "m.onnx"
    result = export_model(
        work["yaml"], imgsz=64, int8=True, calib=work["calib"], int8_skip=",".join(names), out=out,
        check=False, per_channel=False,
    )  # fmt: skip
    assert result.int8 is not None and result.int8.skipped == names
    assert _float_convs(result.int8.path) == {*names, f"{HEAD}dfl/conv/Conv"}
    assert not result.int8.path.with_name("m.int8-sensitivity.csv").exists()  # no ranking was asked for
    assert _weight_scale_sizes(result.int8.path) == {1}
    assert max(_weight_scale_sizes(work["int8"])) >= 8  # the default: one scale per output channel


def test_val_prints_map_for_onnx_and_int8(work: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    for form in ("fp32", "int8"):
        assert main(["val", str(work[form]), f"data={work['data']}", "imgsz=64"]) == 0
        out = capsys.readouterr().out
        assert "mAP50 " in out and "mAP50-95 " in out and "rect=False" in out


def _listing(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["int8=True", "calib={empty}"], "holds no images"),
        (["int8=True", "calib={root}/nowhere"], "does not exist"),
        (["int8=True", "calib=0"], "calib=0"),
        (["format=torchscript", "int8=True", "calib={calib}"], "format=onnx or format=openvino"),
        (["calib={calib}"], "int8=True only"),
        (["per_channel=False"], "int8=True only"),
        (["format=openvino", "int8=True", "calib={calib}", "int8_skip=auto:1"], "apply to format=onnx"),
        (["int8=True", "calib={calib}", "int8_skip=auto:x"], "auto:K"),
        (["out={root}/newdir/"], "names a folder"),
        (["out={calib}"], "is a directory"),
        (["format=torchscript", "opset=12"], "opset=12 does not apply"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    work: dict[str, Path], capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    root = work["root"]
    (root / "empty").mkdir(exist_ok=True)
    before = _listing(root)
    fill = {"empty": root / "empty", "root": root, "calib": work["calib"]}
    code = main(["export", str(work["yaml"]), "imgsz=64", *(a.format(**fill) for a in args)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert _listing(root) == before and not (root / "newdir").exists()


def test_already_quantized_model_is_refused(work: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(work["int8"]), "int8=True"]) == 2
    assert "already quantized" in capsys.readouterr().err


def test_torchscript_export_works(work: dict[str, Path]) -> None:
    out = work["root"] / "ts" / "m.torchscript"
    assert main(["export", str(work["yaml"]), "format=torchscript", "imgsz=64", f"out={out}"]) == 0
    assert torch.jit.load(str(out))(torch.zeros(1, 3, 64, 64)).shape[1] == 6  # 4 box + 2 classes


def _export_under_limit(model: Path, out: Path, fmt: str, limit: int) -> subprocess.CompletedProcess[str]:
    """``reparam export overwrite=True`` in a process whose files may not exceed ``limit`` bytes."""
    code = (
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "from reparam.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = [str(model), f"format={fmt}", "imgsz=64", f"out={out}", "overwrite=True", "check=False"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-c", code, "export", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.slow
def test_full_disk_keeps_the_previous_export(work: dict[str, Path]) -> None:
    previous = work["fp32"].read_bytes()
    done = _export_under_limit(work["yaml"], work["fp32"], "onnx", 100_000)  # the ONNX file is ~0.8 MB
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "out of space" in err[-1] and "Traceback" not in done.stderr, done.stderr
    assert work["fp32"].read_bytes() == previous
    assert sorted(p.name for p in work["fp32"].parent.iterdir()) == [
        "m.int8-sensitivity.csv",
        "m.int8.onnx",
        "m.onnx",
    ]


@pytest.mark.slow
def test_openvino_int8_through_ultralytics(work: dict[str, Path]) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    out = work["root"] / "ov" / "m_int8_openvino_model"
    args = [
        "export",
        str(work["yaml"]),
        "format=openvino",
        "int8=True",
        f"calib={work['calib']}",
        f"out={out}",
    ]
    assert main([*args, "imgsz=64"]) == 0
    xml = next(out.glob("*.xml")).read_text()
    assert 'type="FakeQuantize"' in xml
    assert not list(
        work["calib"].parent.glob("*.cache")
    )  # Ultralytics' label cache went to a temporary folder


def test_format_without_its_package_is_one_line(work: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    if importlib.util.find_spec("coremltools") is not None:
        pytest.skip("coremltools is installed")
    out = work["root"] / "coreml" / "m.mlpackage"
    assert main(["export", str(work["yaml"]), "format=coreml", "imgsz=64", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "coremltools" in err and len(err.splitlines()) == 1, err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_auto_skip_calibrates_once_as_a_fresh_calibration_would(
    work: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    ort_quantize = importlib.import_module(
        "onnxruntime.quantization.quantize"
    )  # the module, not its function
    calls = []
    real = ort_quantize.create_calibrator
    monkeypatch.setattr(ort_quantize, "create_calibrator", lambda *a, **k: calls.append(1) or real(*a, **k))
    common = {"imgsz": 64, "int8": True, "calib": work["calib"], "check": False}
    torch.manual_seed(0)
    auto = export_model(work["yaml"], int8_skip="auto:1", out=work["root"] / "once" / "m.onnx", **common)
    assert len(calls) == 1  # the ranking's ranges serve the final quantization too
    assert auto.int8 is not None
    torch.manual_seed(0)  # the same weights, quantized with the same skip after a calibration of its own
    named = ",".join(auto.int8.skipped)
    fresh = export_model(work["yaml"], int8_skip=named, out=work["root"] / "fresh" / "m.onnx", **common)
    assert len(calls) == 2 and fresh.int8 is not None
    inits = [
        {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(r.int8.path).graph.initializer}
        for r in (auto, fresh)
    ]
    assert inits[0].keys() == inits[1].keys()
    for name, value in inits[0].items():
        np.testing.assert_array_equal(value, inits[1][name], err_msg=name)
