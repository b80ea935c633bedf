"""``reparam demo``, the main job: train a re-parameterized detector, prove the conversion, measure it.

Nine stages, each a function below: 1. data (default: the DeepForest tree-crown photos, tiled),
2. training (Ultralytics, reparam trainer), 3. validation of the training form (unconverted), 4. deploy
checkpoint, 5. verification (per block and end to end, fp32 and fp64, on real validation images),
6. validation of the converted form in fp32 and of the deploy checkpoint (their mAP must equal the training
form's within ``MAP_TOL``; ``MAP_TOL_FP16`` for a checkpoint stored in fp16), 7. side-by-side latency,
params and FLOPs of the training form, the converted form and the plain Ultralytics model, 8. ONNX export
checked in onnxruntime, and INT8 forms (onnxruntime QDQ; OpenVINO fp32/INT8 when installed) with their mAP
and latency beside fp32, 9. report (:mod:`reparam.app.report`).

Files: the demo owns its ``out`` folder (``train/``, ``deploy/``, ``report/``), and a re-run
replaces what an earlier run wrote there, so the command can be repeated as is. Every checkpoint it reads
(``model`` and the files it wrote) is read without running code from it unless ``trust=True``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from ultralytics import YOLO
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

from reparam.app.data import resolve_data
from reparam.app.export import (
    ONNX_RTOL,
    ExportResult,
    OnnxCheck,
    check_onnx,
    export_model,
    export_onnx,
    onnx_ops,
)
from reparam.app.int8 import measure_forms
from reparam.app.models import load, plain_model, stride_imgsz
from reparam.app.report import (
    BASELINE,
    CONVERTED,
    DEPLOYED,
    Checks,
    DemoReport,
    summary_rows,
    write_demo_report,
)
from reparam.app.train import TrainResult, train, use_threads
from reparam.bench.profile import FormProfile, format_profiles, profile_forms
from reparam.blocks.base import check_positive
from reparam.checks import strict_bools
from reparam.io import atomic_path, check_folder
from reparam.text import Progress, say
from reparam.verification import VerifyReport, default_rtol, relative_error, verify
from reparam.yolo import convert_model, deploy_checkpoint
from reparam.yolo.fonts import plot_fonts
from reparam.yolo.safety import load_ultralytics_checkpoint, ultralytics_safe_load

__all__ = ["MAP_TOL", "MAP_TOL_FP16", "DemoResult", "Validator", "load_unfused", "run_demo"]

# Converted vs training form: |mAP difference| allowed (absolute, on mAP50 and mAP50-95). In fp32 the two
# forms compute the same function up to rounding (~1e-6 relative), which can only flip detections sitting
# exactly on a confidence or NMS threshold. A deploy checkpoint stored in fp16 (as every Ultralytics
# training checkpoint is) perturbs outputs by ~1e-3 relative.
MAP_TOL = 1e-3
MAP_TOL_FP16 = 5e-3
_STAGES = 9


@dataclass
class DemoResult:
    """Outcome of :func:`run_demo`: pass/fail per check, the printed summary, where the report is."""

    checks: Checks
    table: str
    report_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(ok for ok, _ in self.checks.values())


class _StageClock:
    """Prints numbered stage headers with the elapsed time and records seconds per stage."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.step, self.start, self.seconds = progress, 0, time.perf_counter(), {}

    @contextmanager
    def __call__(self, key: str, msg: str) -> Iterator[None]:
        self.step += 1
        t0 = time.perf_counter()
        say(self.progress, f"\n[{self.step}/{_STAGES}] {msg}  (elapsed {t0 - self.start:.0f}s)")
        yield
        self.seconds[key] = time.perf_counter() - t0


@dataclass
class Validator:
    """Ultralytics validation on the demo's data and settings. The metrics are the result: Ultralytics'
    run folder (empty with ``plots=False``) goes to a temporary folder, removed afterwards.

    ``threads``: torch CPU threads (every core; Ultralytics alone would use ``cpu_count - 1``)."""

    data: Path
    imgsz: int
    batch: int
    device: str
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __call__(self, net: YOLO) -> dict[str, float]:
        use_threads(net, self.threads)
        with tempfile.TemporaryDirectory(prefix="reparam-val-") as tmp:
            metrics = net.val(
                data=str(self.data), imgsz=self.imgsz, batch=self.batch, device=self.device, plots=False,
                verbose=False, project=tmp, name="val",
            )  # fmt: skip
        box = metrics.box
        return {
            "mAP50": float(box.map50),
            "mAP50-95": float(box.map),
            "precision": float(box.mp),
            "recall": float(box.mr),
            "val ms/img": float(metrics.speed["inference"]),
        }


@dataclass
class _Proof:
    """Stage 5: both forms, the validation images, fp32/fp64 verification and the deploy file's error."""

    train_form: nn.Module
    deploy_form: nn.Module
    x: Tensor
    v32: VerifyReport
    v64: VerifyReport
    file_abs: float
    file_rel: float
    stored: torch.dtype


def _val_images(data: Path, imgsz: int, n: int = 4) -> Tensor:
    """Up to ``n`` validation images of ``data`` resized to ``imgsz`` (real inputs for the checks)."""
    val = check_det_dataset(str(data))["val"]
    files: list[Path] = []
    for src in map(Path, val if isinstance(val, list) else [val]):
        if src.is_dir():
            files += sorted(p for p in src.rglob("*") if p.suffix.lower().lstrip(".") in IMG_FORMATS)
        else:
            files += [Path(line.strip()) for line in src.read_text().splitlines() if line.strip()]
    if not files:
        raise ValueError(f"no validation images found for {data}")
    picks = [files[round(i * (len(files) - 1) / max(n - 1, 1))] for i in range(min(n, len(files)))]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((imgsz, imgsz), Image.BILINEAR)) for f in picks]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


@strict_bools
def load_unfused(ckpt: Path, trust: bool) -> YOLO:
    """``ckpt`` loaded with ``fuse()`` a no-op on its model, so Ultralytics validates it unconverted."""
    net = load(ckpt, trust=trust)
    net.model.fuse = types.MethodType(lambda self, *args, **kwargs: self, net.model)
    return net


def _prove(
    best: Path, deploy_pt: Path, data: Path, imgsz: int, trust: bool, progress: Progress | None
) -> _Proof:
    """Stage 5: verify per block and end to end (fp32, fp64) and the deploy file against the training form."""
    train_form = load(best, trust=trust).model.float().eval()
    deploy_form = load(deploy_pt, trust=trust).model.float().eval()
    x = _val_images(data, imgsz)
    v32 = verify(train_form, x, rtol=1e-4)
    v64 = verify(train_form, x, dtype=torch.float64, rtol=1e-10)
    with torch.no_grad():
        file_abs, file_rel = relative_error(train_form(x), deploy_form(x))
    # the dtype the deploy file stores (loading through Ultralytics casts to fp32)
    stored = next(load_ultralytics_checkpoint(deploy_pt, trust=trust)["model"].parameters()).dtype
    say(progress, f"fp32: {str(v32).splitlines()[0]}\nfp64: {str(v64).splitlines()[0]}")
    return _Proof(train_form, deploy_form, x, v32, v64, file_abs, file_rel, stored)


def _validate_converted(
    best: Path, deploy_pt: Path, validate: Validator, trust: bool
) -> dict[str, dict[str, float]]:
    """Stage 6: mAP of the converted form in memory (fp32) and of the deploy checkpoint file."""
    in_memory = load(best, trust=trust)
    convert_model(in_memory.model)
    return {
        CONVERTED: validate(in_memory),
        DEPLOYED: validate(load(deploy_pt, trust=trust)),
    }


def _export(
    deploy_pt: Path,
    proof: _Proof,
    plain: tuple[str, nn.Module] | None,
    data: Path,
    imgsz: int,
    trust: bool,
    progress: Progress | None,
) -> tuple[ExportResult, OnnxCheck, bool | None]:
    """Stage 8: the deploy checkpoint as fp32 ONNX and its INT8 form (one export; INT8 calibrated on the
    training images), the fp32 file checked in onnxruntime; same op counts as the plain model?
    The ONNX files and the plain checkpoint are the demo's own (replaced on a re-run)."""
    exported = export_model(
        deploy_pt, imgsz=imgsz, overwrite=True, trust=trust, int8=True, data=data, check=False,
        progress=progress,
    )  # fmt: skip
    onnx_check = check_onnx(exported.path, proof.deploy_form, proof.x[:1])
    if plain is None:
        return exported, onnx_check, None
    plain_pt = deploy_pt.parent / f"plain-{Path(plain[0]).stem}.pt"
    net = YOLO(plain[0], verbose=False)
    net.model = plain[1]  # the plain model with the demo's classes (the YAML alone builds 80)
    with atomic_path(plain_pt, overwrite=True) as tmp:
        net.save(tmp)
    return exported, onnx_check, onnx_ops(export_onnx(plain_pt, imgsz, overwrite=True)) == onnx_check.ops


def _int8(
    deploy_pt: Path,
    exported: ExportResult,
    data: Path,
    imgsz: int,
    rounds: int,
    trust: bool,
    progress: Progress | None,
) -> list[dict[str, str]]:
    """Stage 8 (INT8 rows): the fp32 and INT8 ONNX of :func:`_export` and, with openvino and nncf installed,
    the deploy checkpoint as OpenVINO fp32 and INT8; mAP (rect=False) and batch-1 latency of each."""
    assert exported.int8 is not None
    forms = {"fp32 ONNX (onnxruntime)": exported.path, "INT8 ONNX (onnxruntime)": exported.int8.path}
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        folder = deploy_pt.parent / "int8"
        common = {"imgsz": imgsz, "overwrite": True, "trust": trust, "data": data, "check": False}
        for name, q in (("OpenVINO fp32", False), ("OpenVINO INT8 (NNCF)", True)):
            ov = folder / f"{deploy_pt.stem}{'_int8' if q else ''}_openvino_model"
            forms[name] = export_model(deploy_pt, "openvino", out=ov, int8=q, **common).path
    else:
        say(progress, "OpenVINO rows skipped: openvino and nncf are not installed")
    return measure_forms(forms, data, imgsz, rounds, progress)


def _map_check(maps: dict[str, dict[str, float]], form: str, tol: float, note: str = "") -> tuple[bool, str]:
    gap = {k: abs(maps[form][k] - maps[BASELINE][k]) for k in ("mAP50", "mAP50-95")}
    detail = ", ".join(f"|d {k}| {g:.4f}" for k, g in gap.items()) + f" (tol {tol}{note})"
    return all(g <= tol for g in gap.values()), detail


def _checks(
    proof: _Proof, maps: dict[str, dict[str, float]], onnx_check: OnnxCheck, same_ops: bool | None
) -> Checks:
    """Every pass/fail the demo reports, with the numbers behind it."""
    v32, v64, dtype = proof.v32, proof.v64, str(proof.stored).removeprefix("torch.")
    file_tol = default_rtol(proof.stored)
    deploy_tol = MAP_TOL_FP16 if proof.stored == torch.float16 else MAP_TOL
    checks = {
        "verify fp32 (per block + end to end)": (
            v32.ok, f"{len(v32.blocks)} blocks, max_rel {v32.max_rel:.2e} (rtol {v32.rtol:.0e})"
        ),
        "verify fp64 (per block + end to end)": (v64.ok, f"max_rel {v64.max_rel:.2e} (rtol {v64.rtol:.0e})"),
        "deploy checkpoint vs training form": (
            proof.file_rel <= file_tol,
            f"max_abs {proof.file_abs:.2e}, max_rel {proof.file_rel:.2e} (rtol {file_tol:.0e}: weights "
            f"stored in {dtype}; {len(proof.x)} val images)",
        ),
        "converted (fp32) mAP matches training form": _map_check(maps, CONVERTED, MAP_TOL),
        "deploy mAP matches training form": _map_check(
            maps, DEPLOYED, deploy_tol, f", deploy checkpoint in {dtype}"
        ),
        "ONNX in onnxruntime matches PyTorch": (
            onnx_check.ok, f"max_rel {onnx_check.max_rel:.2e} (rtol {ONNX_RTOL:.0e})"
        ),
    }  # fmt: skip
    if same_ops is not None:
        checks["ONNX op types/counts identical to plain"] = (
            same_ops,
            f"{sum(onnx_check.ops.values())} nodes",
        )
    return checks


def _train(
    model: str,
    data: Path,
    epochs: int,
    validate: Validator,
    out: Path,
    trust: bool,
    progress: Progress | None,
) -> TrainResult:
    """Stage 2. nbs=batch: one optimizer step per batch. Ultralytics' default (nbs=64) accumulates 64
    images per step, which on ~100 tiles leaves ~1.5 steps per epoch and a detector that learns nothing."""
    v = validate
    return train(
        model, data, epochs, v.imgsz, v.batch, v.device, project=out, name="train", exist_ok=True,
        nbs=v.batch, plots=False, amp=False, seed=0, deterministic=True, progress=progress, trust=trust,
        threads=v.threads,
    )  # fmt: skip


def _benchmark(
    proof: _Proof,
    plain: tuple[str, nn.Module] | None,
    imgsz: int,
    batches: tuple[int, int],
    rounds: int,
    progress: Progress | None,
) -> list[FormProfile]:
    """Stage 7: params, FLOPs and interleaved latency of the training form, the deploy form and plain."""
    forms = {BASELINE: proof.train_form, DEPLOYED: proof.deploy_form}
    if plain is not None:
        forms[f"plain {plain[0]}"] = plain[1]
    profiles = profile_forms(forms, imgsz, batches, rounds, progress)
    say(progress, format_profiles(profiles, BASELINE))
    return profiles


@strict_bools
def run_demo(
    model: str = "yolov8n-orepa.yaml",
    data: str | Path | None = None,
    epochs: int = 30,
    imgsz: int = 320,
    batch: int = 8,
    out: str | Path = "runs/reparam-demo",
    device: str = "cpu",
    rounds: int = 15,
    throughput_batch: int = 8,
    progress: Progress | None = None,
    trust: bool = False,
    threads: int | None = None,
) -> DemoResult:
    """The main job: train, validate, convert, verify, validate the deploy form, benchmark, export, report.

    Re-running replaces the files of the previous run in ``out``; ``trust=True`` reads ``model`` (and the
    files trained from it) with full pickle. ``threads``: torch CPU threads of training, validation and
    the benchmark (None: every core)."""
    if threads is not None:
        check_positive(threads=threads)
    out, imgsz = check_folder("out", out, "the demo's files").resolve(), stride_imgsz(imgsz)
    load(model, trust=trust)  # refuse a bad or unsafe model before any work (data, training)
    stage = _StageClock(progress)
    with plot_fonts(), ultralytics_safe_load(trust):
        with stage("data", "data"):
            data_yaml, data_desc = resolve_data(data, tile=imgsz, progress=progress)
        validate = Validator(data_yaml, imgsz, batch, device, threads or os.cpu_count() or 1)
        with stage("train", f"train {model} for {epochs} epochs at {imgsz}px on {device}"):
            run = _train(model, data_yaml, epochs, validate, out, trust, progress)
        with stage("validate training form", "validate the training form (unconverted)"):
            maps = {BASELINE: validate(load_unfused(run.best, trust))}
        with stage("convert", "convert: deploy checkpoint"):
            deploy_pt = out / "deploy" / f"{Path(model).stem}-deploy.pt"
            deploy_checkpoint(run.best, deploy_pt, overwrite=True, trust=trust)
            say(progress, f"wrote {deploy_pt}")
        with stage("verify", "verify: per block and end to end, fp32 and fp64, on validation images"):
            proof = _prove(run.best, deploy_pt, data_yaml, imgsz, trust, progress)
        with stage(
            "validate converted", "validate the converted form (fp32, in memory) and the deploy checkpoint"
        ):
            maps |= _validate_converted(run.best, deploy_pt, validate, trust)
        with stage(
            "benchmark", f"benchmark: training form vs converted vs plain, batch 1 and {throughput_batch}"
        ):
            torch.set_num_threads(validate.threads)  # the thread count of training and validation
            plain = plain_model(proof.train_form)
            profiles = _benchmark(proof, plain, imgsz, (1, throughput_batch), rounds, progress)
        with stage("export", "export ONNX and check it in onnxruntime; INT8 forms, their mAP and latency"):
            exported, onnx_check, same_ops = _export(
                deploy_pt, proof, plain, data_yaml, imgsz, trust, progress
            )
            int8_rows = _int8(deploy_pt, exported, data_yaml, imgsz, rounds, trust, progress)
        with stage("report", "report"):
            seconds = stage.seconds | {"total": time.perf_counter() - stage.start}
            header = (
                f"reparam demo: {model} on {data_desc}; {epochs} epochs at {imgsz}px on {device}; "
                f"total {seconds['total']:.0f}s"
            )
            report = DemoReport(
                out / "report", header, summary_rows(profiles, maps, (1, throughput_batch)), profiles, run,
                proof.v32, proof.v64, maps, _checks(proof, maps, onnx_check, same_ops), deploy_pt,
                exported.path, seconds, int8_rows,
            )  # fmt: skip
            write_demo_report(report)
    say(progress, f"\n{report.text}\n\nreport: {report.folder}")
    return DemoResult(report.checks, report.text, report.folder, seconds)
