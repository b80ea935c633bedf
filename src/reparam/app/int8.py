"""``reparam export int8=True``: what to calibrate on and what to keep in float, checked before any work,
then the INT8 ONNX file (onnxruntime QDQ, :mod:`reparam.yolo.quantize`) or Ultralytics' OpenVINO/NNCF export.

Calibration images (``calib=``): a folder of images, a data YAML (its training images), a number N (the
first N, evenly spread, of the model's training images) or nothing (up to :data:`CALIB_DEFAULT` of them).
The model's training data is the ``data`` its checkpoint was trained on, else ``data=``, else the bundled
tree-crown set. ``int8_skip=auto:K`` ranks the quantized convs by sensitivity (saved as CSV) and keeps the K
most sensitive in float; ``int8_skip=name,name`` names ONNX conv nodes to keep in float.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from ultralytics import YOLO

from reparam.app.data import check_data_yaml, resolve_data
from reparam.bench.latency import compare_latency
from reparam.bench.report import write_csv
from reparam.checks import strict_bools
from reparam.io import atomic_path, check_writable
from reparam.text import Progress, say
from reparam.yolo.export import export_atomic
from reparam.yolo.quantize import (
    IMAGE_SUFFIXES,
    activation_type,
    copy_metadata,
    decode_nodes,
    image_files,
    letterbox_images,
    onnx_outputs,
    ort_call,
    output_error,
    quantizable_convs,
    quantize_detector,
    rank_sensitivity,
    spread,
    training_images,
)

__all__ = [
    "CALIB_DEFAULT",
    "INT8_FORMATS",
    "Int8Plan",
    "Int8Result",
    "measure_forms",
    "plan_int8",
    "quantize_onnx",
    "runner",
]

CALIB_DEFAULT = 128
"""Calibration images used when ``calib=`` is not given (evenly spread over the training images)."""
INT8_FORMATS = ("onnx", "openvino")
_PROBE = 16  # images on which the sensitivity ranking and the INT8 output error are measured


@dataclass
class Int8Plan:
    """Everything INT8 export needs, resolved and checked before any work."""

    files: list[Path]
    auto: int | None = None
    skip: list[str] = field(default_factory=list)
    int8_path: Path | None = None
    csv_path: Path | None = None

    @contextlib.contextmanager
    def openvino_data(self, net: YOLO) -> Iterator[dict[str, Any]]:
        """Ultralytics' INT8 export arguments: a temporary data YAML whose train split is a temporary folder
        of links to the calibration images (so Ultralytics' label cache is written there, not beside the
        user's images), and ``split=train``."""
        with tempfile.TemporaryDirectory(prefix="reparam-calib-") as tmp:
            images = Path(tmp) / "images"
            images.mkdir()
            for i, f in enumerate(self.files):
                (images / f"{i:06d}{f.suffix.lower()}").symlink_to(f.resolve())
            data = Path(tmp) / "calib.yaml"
            names = dict(getattr(net.model, "names", {}) or {0: "object"})
            data.write_text(yaml.safe_dump({"train": str(images), "val": str(images), "names": names}))
            yield {"quantize": 8, "data": str(data), "split": "train"}


@dataclass
class Int8Result:
    """The INT8 ONNX file and what was measured making it."""

    path: Path
    activation: str
    why: str
    skipped: list[str]
    decode: int
    error: float
    csv: Path | None = None
    ranking: list[Any] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per fact."""
        out = [
            f"INT8 ONNX: {self.path}",
            f"activations {self.activation}: {self.why}",
            f"kept in float: the decode ({self.decode} nodes)"
            + (f" and {len(self.skipped)} conv(s): {', '.join(self.skipped)}" if self.skipped else ""),
            f"INT8 vs fp32 output on calibration images: max_rel {self.error:.3e} (boxes and scores each)",
        ]
        if self.csv is not None:
            out.append(f"sensitivity ranking (most sensitive first) saved to {self.csv}:")
            out += [f"  {i + 1:3d}. {r.node}  {r.error:.3e}" for i, r in enumerate(self.ranking[:10])]
        return out


def _model_data(net: YOLO, data: str | Path | None, progress: Progress | None) -> Path:
    """``data=``, else the data the checkpoint was trained on, else the bundled tree-crown set."""
    if data is not None:
        return check_data_yaml(data)
    trained = ((getattr(net, "ckpt", None) or {}).get("train_args") or {}).get("data")
    if trained:
        try:
            return check_data_yaml(trained)
        except (ValueError, FileNotFoundError):
            raise ValueError(
                f"the model was trained on data={trained}, which is not here; pass calib= (a folder of "
                "images) or data="
            ) from None
    return resolve_data(None, progress=progress)[0]


def _skip_spec(int8_skip: str | None) -> tuple[int | None, list[str]]:
    spec = (int8_skip or "").strip()
    if spec.startswith("auto:"):
        k = spec.removeprefix("auto:")
        if not k.isdigit():
            raise ValueError(
                f"int8_skip={int8_skip}: expected auto:K with K a number >= 0, or conv node names"
            )
        return int(k), []
    return None, [n.strip() for n in spec.split(",") if n.strip()]


@strict_bools
def plan_int8(
    net: YOLO,
    fmt: str,
    target: Path,
    int8: bool,
    data: str | Path | None,
    *,
    calib: str | Path | int | None = None,
    int8_skip: str | None = None,
    per_channel: bool | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Int8Plan | None:
    """Resolve and check the INT8 arguments (None when ``int8`` is False); ValueError naming a bad one:
    ``calib``/``int8_skip`` without ``int8=True``, a format that cannot take INT8, a missing or empty
    calibration folder, ``calib=0``, an existing output without ``overwrite=True``. ``calib`` and
    ``int8_skip`` are None when not given, ``per_channel`` is False when per-tensor weights were asked."""
    if not int8:
        for key, value in (("calib", calib), ("int8_skip", int8_skip), ("per_channel", per_channel)):
            if value is not None:
                raise ValueError(f"{key}= applies to int8=True only")
        return None
    if fmt not in INT8_FORMATS:
        raise ValueError(f"int8=True works with format=onnx or format=openvino, not format={fmt}")
    auto, skip = _skip_spec(int8_skip)
    if fmt == "openvino" and (auto is not None or skip or per_channel is not None):
        raise ValueError(
            "int8_skip= and per_channel= apply to format=onnx (Ultralytics' OpenVINO export sets its own)"
        )
    limit, folder, source = CALIB_DEFAULT, None, None
    if isinstance(calib, int) or (isinstance(calib, str) and calib.strip().isdigit()):
        limit = int(calib)
        if limit < 1:
            raise ValueError(
                f"calib={calib}: the number of calibration images must be >= 1 (or give a folder)"
            )
    elif calib is not None:
        path = Path(calib).expanduser()
        if not path.exists():
            raise ValueError(
                f"calib={calib} does not exist; give a folder of images, a data YAML or a number"
            )
        if path.is_dir():
            folder = path
        else:
            source = check_data_yaml(path)
    if folder is not None:
        files = image_files(folder, "calib")
        if not files:
            raise ValueError(f"calib={calib} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    else:
        source = source or _model_data(net, data, progress)
        files = spread(training_images(source), limit)
    plan = Int8Plan(files, auto, skip)
    if fmt == "onnx":
        plan.int8_path = check_writable(target.with_name(target.stem + ".int8.onnx"), overwrite)
        if auto is not None:
            plan.csv_path = check_writable(target.with_name(target.stem + ".int8-sensitivity.csv"), overwrite)
    return plan


@strict_bools
def quantize_onnx(
    net: YOLO,
    target: Path,
    plan: Int8Plan,
    args: dict[str, Any],
    per_channel: bool = True,
    *,
    overwrite: bool = False,
    trust: bool = False,
    progress: Progress | None = None,
) -> Int8Result:
    """Export ``net`` to fp32 ONNX (Ultralytics, ``args``) and quantize it; both files (and the ranking CSV)
    are made in a temporary folder and renamed into place only when everything succeeded."""
    assert plan.int8_path is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent) as tmp:
        work = Path(tmp)
        fp32 = export_atomic(net, work / target.name, trust=trust, **args)
        images = letterbox_images(plan.files, int(args["imgsz"]))
        decode = decode_nodes(fp32, f"/model.{len(net.model.model) - 1}/")
        convs = quantizable_convs(fp32, decode)
        activation, why = activation_type()
        say(progress, f"INT8: {len(images)} calibration images, {len(convs)} convs, activations {activation}")
        ranking, skip, ranges = [], plan.skip, work / "ranges.json"  # calibrated once, shared
        unknown = [n for n in skip if n not in convs]
        if unknown:
            raise ValueError(
                f"int8_skip: {', '.join(unknown)} is not a quantized conv of this graph (e.g. {convs[0]})"
            )
        if plan.auto is not None:
            say(progress, f"INT8: ranking {len(convs)} convs by sensitivity (one quantization each) ...")
            ranking = rank_sensitivity(
                fp32, images, images[:_PROBE], decode=decode, activation=activation, cache=ranges,
                per_channel=per_channel,
            )  # fmt: skip
            skip = [r.node for r in ranking[: plan.auto]]
        q = quantize_detector(
            fp32, work / plan.int8_path.name, images, exclude=[*decode, *skip], activation=activation,
            per_channel=per_channel, cache=ranges,
        )  # fmt: skip
        copy_metadata(fp32, q)
        probe = images[:_PROBE]
        error = output_error(onnx_outputs(fp32, probe), onnx_outputs(q, probe))
        result = Int8Result(plan.int8_path, activation, why, skip, len(decode), error, plan.csv_path, ranking)
        if plan.csv_path is not None:
            rows = [
                {"rank": i + 1, "node": r.node, "output_error": f"{r.error:.6e}", "kept_float": i < len(skip)}
                for i, r in enumerate(ranking)
            ]
            write_csv(plan.csv_path, rows, overwrite=overwrite)
        for made, final in ((fp32, target), (q, plan.int8_path)):
            with atomic_path(final, overwrite=overwrite) as dst:
                os.replace(made, dst)
    return result


def runner(path: Path, x: np.ndarray) -> Callable[[object], object]:
    """A one-thread batch-1 call of an ``.onnx`` file (onnxruntime) or ``_openvino_model`` folder (OpenVINO,
    f32 precision hint: on a CPU with bf16 instructions its default runs fp32 layers in bf16) on the fixed
    input ``x``, for :func:`reparam.bench.latency.compare_latency`."""
    if path.is_dir():
        import openvino as ov

        xml = next(path.glob("*.xml"))
        config = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
        compiled = ov.Core().compile_model(str(xml), "CPU", config)
        request = compiled.create_infer_request()
        return lambda _: request.infer({0: x})
    return ort_call(path, x)


def measure_forms(
    forms: Mapping[str, Path], data: Path, imgsz: int, rounds: int = 30, progress: Progress | None = None
) -> list[dict[str, str]]:
    """mAP (:func:`reparam.app.val.validate`: rect=False, batch 1) and batch-1 latency (medians of
    interleaved rounds, one thread) of each exported form; drops and ratios against the first form."""
    from reparam.app.val import validate

    rows = []
    for name, path in forms.items():
        v = validate(path, data=data, imgsz=imgsz)
        rows.append({"form": name, "mAP50": f"{v.map50:.4f}", "mAP50-95": f"{v.map50_95:.4f}"})
        say(progress, f"  {name}: mAP50 {v.map50:.4f}, mAP50-95 {v.map50_95:.4f}")
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    runners = {n: runner(p, x) for n, p in forms.items()}
    timings = compare_latency(runners, torch.from_numpy(x), rounds=rounds, calls_per_round=1)
    base_ms, base_map = timings[rows[0]["form"]], float(rows[0]["mAP50"])
    for row in rows:
        t = timings[row["form"]]
        row |= {
            "mAP50 drop": f"{base_map - float(row['mAP50']):+.4f}",
            "ms (batch 1)": f"{t.median_ms:.2f}",
            f"vs {rows[0]['form']}": f"{t.ratio_to(base_ms):.2f}",
        }
    return rows
