"""INT8 post-training quantization of an exported detector with onnxruntime: calibration images prepared as
Ultralytics' predictor prepares them, the head's decode left in float, the activation type measured on this
CPU, and a per-layer sensitivity ranking for partial quantization.

Why the decode stays float: Ultralytics' output concatenates box coordinates (pixels, up to ~imgsz) with class
scores (0..1); one INT8 scale over both rounds every score to 0. Why the activation type is measured: on a CPU
without VNNI onnxruntime runs few signed-activation convs as integer convolutions (the rest as dequantize ->
fp32 conv -> quantize, slower than fp32), so QInt8 vs QUInt8 is decided by timing a small QDQ conv here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reparam.checks import strict_bools
from reparam.verification import relative_error

__all__ = [
    "IMAGE_SUFFIXES",
    "Sensitivity",
    "activation_type",
    "copy_metadata",
    "decode_nodes",
    "image_files",
    "letterbox_images",
    "onnx_outputs",
    "ort_call",
    "ort_session",
    "quantizable_convs",
    "quantize_detector",
    "rank_sensitivity",
    "spread",
    "training_images",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_INPUT = "images"
MAX_FILES = 100_000
"""Bound on the images one folder walk or list file may name (a hostile folder stays cheap)."""


def image_files(folder: Path, arg: str) -> list[Path]:
    """The images under ``folder``, sorted; ValueError naming ``arg=`` past :data:`MAX_FILES`."""
    files = []
    for f in folder.rglob("*"):
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
            files.append(f)
            if len(files) > MAX_FILES:
                raise ValueError(f"{arg}={folder} holds more than {MAX_FILES} images; give a smaller folder")
    return sorted(files)


def training_images(data: Path) -> list[Path]:
    """The training images of an Ultralytics data YAML (a folder, a list file or a list of them)."""
    from ultralytics.data.utils import check_det_dataset

    train = check_det_dataset(str(data))["train"]
    files: list[Path] = []
    for entry in train if isinstance(train, list) else [train]:
        p = Path(entry)
        if p.is_dir():
            files += image_files(p, "data")
        elif p.is_file():
            files += [Path(line.strip()) for line in p.read_text().splitlines()[:MAX_FILES] if line.strip()]
    if not files:
        raise ValueError(f"data={data}: its train split holds no images to calibrate on")
    return files


def spread(files: list[Path], n: int) -> list[Path]:
    """``n`` of ``files`` evenly spread (all of them when there are fewer)."""
    if len(files) <= n:
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


def copy_metadata(src: Path, dst: Path) -> None:
    """Ultralytics reads names, stride and imgsz from the ONNX metadata: give the INT8 file the fp32 one's."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    model = onnx.load(str(dst))
    have = {p.key for p in model.metadata_props}
    for key, value in meta.items():
        if key not in have:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
    onnx.save(model, str(dst))


def letterbox_images(files: Sequence[Path], imgsz: int) -> np.ndarray:
    """``(N, 3, imgsz, imgsz)`` float32 inputs made as Ultralytics' predictor makes them for a fixed-size
    export: its ``LetterBox`` (no auto padding), BGR -> RGB, / 255. ValueError naming an unreadable image."""
    import cv2
    from ultralytics.data.augment import LetterBox

    box = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=32)
    out = np.empty((len(files), 3, imgsz, imgsz), np.float32)
    for i, f in enumerate(files):
        im = cv2.imread(str(f))
        if im is None:
            raise ValueError(f"calibration image {f} cannot be read as an image")
        out[i] = box(image=im)[..., ::-1].transpose(2, 0, 1) / 255.0
    return out


def _graph(model: Any) -> Any:
    import onnx

    return (model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))).graph


def _consumers(graph: Any) -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = {}
    for n in graph.node:
        for t in n.input:
            users.setdefault(t, []).append(n)
    return users


def _downstream(node: Any, users: dict[str, list[Any]]) -> Iterator[Any]:
    """Every node that depends on ``node``'s outputs (each once)."""
    seen: set[str] = set()
    todo = list(node.output)
    while todo:
        for n in users.get(todo.pop(), []):
            if n.name not in seen:
                seen.add(n.name)
                todo += list(n.output)
                yield n


def decode_nodes(model: Any, head: str) -> list[str]:
    """Names of the nodes after the last conv of each branch of the head whose ONNX scope is ``head``
    (e.g. ``/model.22/``): DFL, box arithmetic, sigmoid, concat. ValueError if the graph has none."""
    graph = _graph(model)
    users = _consumers(graph)
    convs = [
        n for n in graph.node if n.op_type == "Conv" and n.name.startswith(head) and "/dfl/" not in n.name
    ]
    conv_names = {n.name for n in convs}
    last = [c for c in convs if not any(d.name in conv_names for d in _downstream(c, users))]
    names = {d.name for c in last for d in _downstream(c, users)}
    if not names:
        raise ValueError(f"no decode found after the head's convolutions (ONNX scope {head!r})")
    return [n.name for n in graph.node if n.name in names]


def quantizable_convs(model: Any, decode: Sequence[str]) -> list[str]:
    """The Conv nodes INT8 quantization applies to: every conv outside the decode, in graph order."""
    skip = set(decode)
    return [n.name for n in _graph(model).node if n.op_type == "Conv" and n.name not in skip]


class _DropHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


@contextlib.contextmanager
def _quiet_preprocess_hint() -> Iterator[None]:
    """onnxruntime logs a hint to run its shape pre-processing twice per quantization (to the root logger);
    the graphs here come from Ultralytics with shapes inferred, so the hint is dropped, nothing else."""
    root, hint = logging.getLogger(), _DropHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


class _Reader:
    """An onnxruntime ``CalibrationDataReader``: one image per batch, over a settable range of images."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.set_range(0, len(images))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter([{_INPUT: self.images[i : i + 1]} for i in range(start_index, end_index)])

    def __len__(self) -> int:
        return len(self.images)


def _stride(n: int, most: int = 8) -> int:
    """The largest divisor of ``n`` up to ``most``: onnxruntime's strided MinMax calibration (ranges merged
    every ``stride`` images, so memory stays bounded) needs one that divides the image count."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"QInt8": QuantType.QInt8, "QUInt8": QuantType.QUInt8}[name]


@strict_bools
def quantize_detector(
    fp32: Path,
    out: Path,
    images: np.ndarray,
    *,
    exclude: Sequence[str],
    activation: str,
    per_channel: bool = True,
    only: Sequence[str] | None = None,
    cache: Path | None = None,
) -> Path:
    """Static QDQ quantization of ``fp32`` to ``out`` with onnxruntime (INT8 weights, ``activation``
    ('QInt8' or 'QUInt8') activations, MinMax ranges from ``images``); nodes in ``exclude`` stay float,
    ``only`` restricts quantization to those nodes; ``cache`` keeps the ranges for later calls."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet_preprocess_hint():
        quantize_static(
            str(fp32),
            str(out),
            _Reader(images),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=_quant_type(activation),
            weight_type=QuantType.QInt8,
            nodes_to_quantize=list(only) if only is not None else None,
            nodes_to_exclude=list(exclude),
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=cache,
            extra_options={"CalibStridedMinMax": _stride(len(images))},
        )
    return out


_INTEGER_CONVS = ("QLinearConv", "ConvInteger")


def ort_session(path: Path, threads: int = 1, optimized: Path | None = None) -> Any:
    """A quiet CPU onnxruntime session on ``threads`` intra-op threads (one inter-op), optionally saving
    the optimized graph to ``optimized``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_call(path: Path, x: np.ndarray) -> Any:
    """A one-thread call of the ONNX file ``path`` on the fixed input ``x`` (for latency rounds)."""
    session = ort_session(path)
    name = session.get_inputs()[0].name
    return lambda _: session.run(None, {name: x})


def _probe_model(path: Path, c: int = 32, size: int = 40, depth: int = 4) -> np.ndarray:
    """A stack of 3x3 conv + SiLU (as Ultralytics exports it: Sigmoid, Mul) written to ``path``; returns
    calibration inputs for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], _INPUT
    for i in range(depth):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (c, c, 3, 3)).astype(np.float32), f"w{i}"))
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
            helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sigmoid{i}"),
            helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"m{i}"], name=f"mul{i}"),
        ]
        x = f"m{i}"
    shape = [1, c, size, size]
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info(_INPUT, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return rng.random((4, *shape[1:]), dtype=np.float32)


@functools.cache
def activation_type() -> tuple[str, str]:
    """('QInt8' | 'QUInt8', why): the activation type for which onnxruntime on this CPU runs more of a
    small QDQ conv + SiLU stack's convs as integer convolutions after its graph optimization (ties: the
    faster one, medians of interleaved runs). Measured once per process."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="reparam-int8-probe-") as tmp:
        fp32 = Path(tmp) / "probe.onnx"
        images = _probe_model(fp32)
        sessions, integer, ms = {}, {}, {}
        for kind in ("QInt8", "QUInt8"):
            q = quantize_detector(fp32, Path(tmp) / f"{kind}.onnx", images, exclude=(), activation=kind)
            optimized = Path(tmp) / f"{kind}.opt.onnx"
            sessions[kind] = ort_session(q, optimized=optimized)
            integer[kind] = sum(n.op_type in _INTEGER_CONVS for n in onnx.load(str(optimized)).graph.node)
            ms[kind] = []
        feed = {_INPUT: images[:1]}
        for _ in range(12):
            for kind, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, feed)
                ms[kind].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v[2:]) for k, v in ms.items()}
    best = max(integer, key=lambda k: (integer[k], -med[k]))
    why = ", ".join(f"{k}: {integer[k]}/4 integer convs, {med[k]:.2f} ms" for k in integer)
    return best, f"measured on a QDQ conv probe ({why})"


def output_error(reference: np.ndarray, other: np.ndarray) -> float:
    """Relative error of a detection output ``(B, 4 + classes, anchors)``: boxes and class scores measured
    separately (each against its own scale) and the worse one kept."""
    import torch

    ref, got = torch.from_numpy(reference), torch.from_numpy(other)
    return max(relative_error(ref[:, :4], got[:, :4])[1], relative_error(ref[:, 4:], got[:, 4:])[1])


@dataclass
class Sensitivity:
    """One quantized layer: its ONNX node name and the output error with only it quantized."""

    node: str
    error: float


def onnx_outputs(path: Path, images: np.ndarray) -> np.ndarray:
    """The first output of the ONNX model at ``path`` for each image (batch 1), concatenated."""
    s = ort_session(path)
    return np.concatenate([s.run(None, {_INPUT: images[i : i + 1]})[0] for i in range(len(images))])


@strict_bools
def rank_sensitivity(
    fp32: Path,
    images: np.ndarray,
    probe: np.ndarray,
    *,
    decode: Sequence[str],
    activation: str,
    cache: Path,
    per_channel: bool = True,
) -> list[Sensitivity]:
    """Every quantizable conv, most sensitive first: the detection output's error (:func:`output_error`)
    on ``probe`` images with only that conv quantized. The ranges are calibrated once on ``images`` into
    ``cache`` (a JSON file; an existing one is used), which the final quantization can then reuse."""
    reference = onnx_outputs(fp32, probe)
    rows = []
    with tempfile.TemporaryDirectory(prefix="reparam-int8-rank-") as tmp:
        out = Path(tmp) / "one.onnx"
        for node in quantizable_convs(fp32, decode):
            quantize_detector(
                fp32, out, images, exclude=decode, activation=activation, per_channel=per_channel,
                only=[node], cache=cache,
            )  # fmt: skip
            rows.append(Sensitivity(node, output_error(reference, onnx_outputs(out, probe))))
    return sorted(rows, key=lambda r: -r.error)
