"""Pipelines behind the ``reparam`` command: the demo main job, train, deploy, verify, export, info, bench.

Each is a plain library function (the CLI only parses arguments); progress goes to an optional callback.
The demo trains a re-parameterized detector, proves the conversion, and measures what it buys:

1. data (default: the DeepForest tree-crown photos, tiled), 2. training (Ultralytics, reparam trainer),
3. validation of the training form (unconverted), 4. deploy checkpoint, 5. verification (per block and
end to end, fp32 and fp64, on real validation images), 6. validation of the converted form in fp32 and of
the deploy checkpoint (their mAP must equal the training form's within ``MAP_TOL``; ``MAP_TOL_FP16`` for a
checkpoint stored in fp16), 7. side-by-side latency, params and FLOPs of the training form, the converted
form and the plain Ultralytics model, 8. ONNX export checked in onnxruntime, 9. report.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
import types
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from ultralytics import YOLO
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.patches import torch_load

from reparam.bench.profile import (
    FormProfile,
    count_flops,
    count_params,
    format_profiles,
    profile_forms,
    profile_rows,
)
from reparam.bench.report import (
    markdown_table,
    plot_block_errors,
    plot_latency,
    plot_training_curves,
    read_results_csv,
    write_csv,
)
from reparam.blocks.registry import registered_blocks
from reparam.convert import VerifyReport, default_rtol, verify
from reparam.data.deepforest import prepare_deepforest
from reparam.yolo import ReparamDetectionTrainer, convert_model, deploy_checkpoint, plain_counterpart
from reparam.yolo.deploy import reparam_globals, to_stock_modules

__all__ = [
    "MAP_TOL",
    "MAP_TOL_FP16",
    "DemoResult",
    "ExportResult",
    "OnnxCheck",
    "TrainResult",
    "blocks_used",
    "check_onnx",
    "deploy",
    "describe",
    "export_model",
    "load",
    "model_forms",
    "onnx_ops",
    "plain_model",
    "run_bench",
    "run_demo",
    "train",
    "verify_model",
]

# Converted vs training form: |mAP difference| allowed (absolute, on mAP50 and mAP50-95). In fp32 the two
# forms compute the same function up to rounding (~1e-6 relative), which can only flip detections sitting
# exactly on a confidence or NMS threshold. The deploy checkpoint stores its fused weights in the source
# checkpoint's dtype (fp16, like every Ultralytics checkpoint), which perturbs outputs by ~1e-3 relative.
MAP_TOL = 1e-3
MAP_TOL_FP16 = 5e-3
# ONNX Runtime output vs the PyTorch deploy form (fp32): max |difference| / max |output|.
ONNX_RTOL = 1e-4
Progress = Callable[[str], None]


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


# ---------------------------------------------------------------- model loading


def load(model: str | Path) -> YOLO:
    """A YOLO object for a zoo name (``yolov8n-orepa.yaml``), an Ultralytics YAML or a local checkpoint."""
    name = str(model)
    if name.endswith(".pt") and not Path(name).is_file():
        raise ValueError(f"model checkpoint {name} does not exist (reparam never downloads weights)")
    return YOLO(name, verbose=False)


def _yaml_name(model: nn.Module) -> str:
    cfg = getattr(model, "yaml", None) or {}
    return Path(str(cfg.get("yaml_file", ""))).name


def plain_model(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The stock Ultralytics model a zoo model derives from (same classes), fused; None if not a zoo model."""
    try:
        plain = plain_counterpart(_yaml_name(model))
    except ValueError:
        return None
    built = DetectionModel(plain, nc=int(model.yaml.get("nc", getattr(model, "nc", 80))), verbose=False)
    return plain, built.float().eval().fuse(verbose=False)


def model_forms(model: str | Path | nn.Module) -> dict[str, nn.Module]:
    """Training form (eval), converted form, and the plain model when ``model`` is a zoo model."""
    train_form = (model if isinstance(model, nn.Module) else load(model).model).float().eval()
    forms = {"training form": train_form, "converted": convert_model(copy.deepcopy(train_form))}
    plain = plain_model(train_form)
    if plain is not None:
        forms[f"plain {plain[0]}"] = plain[1]
    return forms


def blocks_used(model: nn.Module) -> Counter[str]:
    """Registered reparam block classes inside ``model`` and how many of each."""
    classes = {spec.cls for spec in registered_blocks().values()}
    return Counter(type(m).__name__ for m in model.modules() if type(m) in classes)


def describe(model: str | Path, imgsz: int = 320) -> str:
    """Params and FLOPs of the training and converted forms (and plain model), and the blocks used."""
    forms = model_forms(model)
    x = torch.zeros(1, 3, imgsz, imgsz)
    width = max(len(n) for n in forms)
    lines = [f"{model} at {imgsz}x{imgsz}", f"{'form':<{width}}  {'params':>11}  {'GFLOPs':>8}"]
    for name, m in forms.items():
        lines.append(f"{name:<{width}}  {count_params(m):>11,}  {count_flops(m, x) / 1e9:>8.3f}")
    if not any(n.startswith("plain ") for n in forms):
        lines.append(
            f"(no plain counterpart: {_yaml_name(forms['training form']) or model} is not a zoo model)"
        )
    used = blocks_used(forms["training form"])
    lines.append("blocks: " + (", ".join(f"{k} x{v}" for k, v in sorted(used.items())) or "none"))
    left = reparam_globals(to_stock_modules(copy.deepcopy(forms["converted"])))
    if left:
        lines.append("no stock Ultralytics form after conversion (deploy needs reparam): " + ", ".join(left))
    return "\n".join(lines)


def verify_model(
    model: str | Path,
    imgsz: int = 320,
    batch: int = 1,
    dtype: str = "float32",
    randomize_bn: bool = False,
    rtol: float | None = None,
    per_block: bool = True,
) -> VerifyReport:
    """:func:`reparam.verify` on an Ultralytics model: training vs converted form on a random input."""
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {list(dtypes)}, got {dtype!r}")
    net = load(model).model.float().eval()
    return verify(
        net,
        input_shape=(batch, 3, imgsz, imgsz),
        dtype=dtypes[dtype],
        randomize_bn=randomize_bn,
        rtol=rtol,
        per_block=per_block,
    )


def deploy(ckpt: str | Path, out: str | Path | None = None) -> str:
    """Write the deploy checkpoint of ``ckpt``; returns a one-paragraph description of what was written."""
    dst = deploy_checkpoint(ckpt, out)
    before, after = load(ckpt).model, load(dst).model
    used = ", ".join(f"{k} x{v}" for k, v in sorted(blocks_used(before).items())) or "none"
    return (
        f"deploy checkpoint: {dst} ({dst.stat().st_size / 1e6:.1f} MB)\n"
        f"params {count_params(before):,} -> {count_params(after):,}; blocks converted: {used}"
    )


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    """Where a training run wrote its outputs."""

    save_dir: Path
    best: Path
    last: Path
    results_csv: Path
    data: Path


def train(
    model: str,
    data: str | Path | None = None,
    epochs: int = 25,
    imgsz: int = 320,
    batch: int = 16,
    device: str = "cpu",
    project: str | Path = "runs/reparam",
    name: str = "train",
    progress: Progress | None = None,
    **overrides: Any,
) -> TrainResult:
    """Ultralytics training with reparam's trainer (``ReparamDetectionTrainer``); default data: DeepForest."""
    if data is None:
        data = prepare_deepforest(progress=progress).yaml
    net = load(model)
    net.train(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        project=str(Path(project).resolve()),
        name=name,
        trainer=ReparamDetectionTrainer,
        **overrides,
    )
    save_dir = Path(net.trainer.save_dir)
    weights = save_dir / "weights"
    return TrainResult(
        save_dir, weights / "best.pt", weights / "last.pt", save_dir / "results.csv", Path(data)
    )


# ---------------------------------------------------------------- export


@dataclass
class OnnxCheck:
    """ONNX Runtime vs the PyTorch deploy form, and the graph's op types."""

    max_abs: float
    max_rel: float
    ops: Counter[str]

    @property
    def ok(self) -> bool:
        """Within :data:`ONNX_RTOL`."""
        return self.max_rel <= ONNX_RTOL


@dataclass
class ExportResult:
    """An exported file and, for ONNX, its onnxruntime check."""

    path: Path
    format: str
    check: OnnxCheck | None = None

    def summary(self) -> str:
        """One line per fact."""
        lines = [f"exported {self.format}: {self.path}"]
        if self.check is not None:
            c = self.check
            lines.append(
                f"onnxruntime vs PyTorch deploy form: max_abs={c.max_abs:.3e} max_rel={c.max_rel:.3e} "
                f"({'PASS' if c.ok else 'FAIL'}, rtol {ONNX_RTOL:.0e})"
            )
            lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(c.ops.items())))
        return "\n".join(lines)


def _rel_error(a: Tensor, b: Tensor) -> tuple[float, float]:
    max_abs = float((a.double() - b.double()).abs().max())
    return max_abs, max_abs / max(float(a.abs().max()), 1e-30)


def _first_tensor(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else _first_tensor(out[0])


def onnx_ops(path: Path) -> Counter[str]:
    """Op types of an ONNX graph and how often each occurs, ``Identity`` no-ops excluded.

    The exporter emits ``Identity`` nodes for initializers that happen to be equal (e.g. the all-zero
    biases of an untrained model), so they say nothing about the architecture.
    """
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.op_type != "Identity")


@torch.no_grad()
def check_onnx(path: Path, reference: nn.Module, x: Tensor) -> OnnxCheck:
    """Run ``path`` in onnxruntime on ``x`` and compare with ``reference(x)``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    want = _first_tensor(reference.float().eval()(x))
    if got.shape != want.shape:
        raise RuntimeError(f"ONNX output shape {tuple(got.shape)} differs from PyTorch {tuple(want.shape)}")
    return OnnxCheck(*_rel_error(want, got), onnx_ops(path))


def export_model(
    model: str | Path,
    format: str = "onnx",
    imgsz: int = 320,
    dynamic: bool = False,
    opset: int | None = None,
    check: bool = True,
) -> ExportResult:
    """Convert and export through Ultralytics (its fuse() converts reparam blocks); checks ONNX files.

    ONNX graphs are not simplified (onnxslim is not a dependency and would be fetched at run time).
    """
    net = load(model)
    path = Path(
        net.export(format=format, imgsz=imgsz, dynamic=dynamic, opset=opset, simplify=False, device="cpu")
    )
    result = ExportResult(path, format)
    if format == "onnx" and check:
        x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
        result.check = check_onnx(path, convert_model(copy.deepcopy(net.model).float().eval()), x)
    return result


# ---------------------------------------------------------------- the demo


def _val_images(data: Path, imgsz: int, n: int = 4) -> Tensor:
    """Up to ``n`` validation images of ``data`` resized to ``imgsz`` (real inputs for the checks)."""
    val = check_det_dataset(str(data))["val"]
    sources = val if isinstance(val, list) else [val]
    files: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            files += sorted(p for p in src.rglob("*") if p.suffix.lower().lstrip(".") in IMG_FORMATS)
        else:
            files += [Path(line.strip()) for line in src.read_text().splitlines() if line.strip()]
    if not files:
        raise ValueError(f"no validation images found for {data}")
    picks = [files[round(i * (len(files) - 1) / max(n - 1, 1))] for i in range(min(n, len(files)))]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((imgsz, imgsz), Image.BILINEAR)) for f in picks]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def _unfused(ckpt: Path) -> YOLO:
    """``ckpt`` loaded with ``fuse()`` a no-op on its model, so Ultralytics validates it unconverted."""
    net = load(ckpt)
    net.model.fuse = types.MethodType(lambda self, *args, **kwargs: self, net.model)
    return net


def _validate(
    net: YOLO, data: Path, imgsz: int, batch: int, device: str, out: Path, name: str
) -> dict[str, float]:
    metrics = net.val(
        data=str(data), imgsz=imgsz, batch=batch, device=device, plots=False, verbose=False,
        project=str(out.resolve()), name=name, exist_ok=True,
    )  # fmt: skip
    return {
        "mAP50": float(metrics.box.map50),
        "mAP50-95": float(metrics.box.map),
        "precision": float(metrics.box.mp),
        "recall": float(metrics.box.mr),
        "val ms/img": float(metrics.speed["inference"]),
    }


@dataclass
class DemoResult:
    """Outcome of :func:`run_demo`: pass/fail per check, the summary table, where the report is."""

    checks: dict[str, tuple[bool, str]]
    table: str
    report_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(ok for ok, _ in self.checks.values())


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _shown(row: Mapping[str, object]) -> dict[str, str]:
    """A summary row formatted for display: ratios as ``0.82x``, numbers rounded."""
    ratio = "vs training form" in str(row["metric"])
    return {k: f"{v:.2f}x" if ratio and isinstance(v, float) else _fmt(v) for k, v in row.items()}


def _summary_rows(
    profiles: Sequence[FormProfile], maps: Mapping[str, Mapping[str, float]], batches: Sequence[int]
) -> list[dict[str, object]]:
    base = profiles[0]
    rows: list[dict[str, object]] = []

    def add(metric: str, values: Sequence[object]) -> None:
        rows.append({"metric": metric, **{p.name: v for p, v in zip(profiles, values, strict=True)}})

    add("params", [p.params for p in profiles])
    add("GFLOPs (batch 1)", [p.gflops for p in profiles])
    for b in batches:
        add(f"latency b{b} median ms", [p.latency[b].median_ms for p in profiles])
        add(
            f"latency b{b} vs training form",
            [round(p.latency[b].ratio_to(base.latency[b]), 3) for p in profiles],
        )
    b = batches[-1]
    add(f"throughput b{b} img/s", [1e3 * b / p.latency[b].median_ms for p in profiles])
    for key in ("mAP50", "mAP50-95"):
        add(f"val {key}", [maps.get(p.name, {}).get(key, math.nan) for p in profiles])
    return rows


def _text_table(rows: Sequence[Mapping[str, object]]) -> str:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(f"{c:<{widths[c]}}" if i == 0 else f"{c:>{widths[c]}}" for i, c in enumerate(cols))]
    for r in rows:
        lines.append(
            "  ".join(
                f"{r[c]!s:<{widths[c]}}" if i == 0 else f"{r[c]!s:>{widths[c]}}" for i, c in enumerate(cols)
            )
        )
    return "\n".join(lines)


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
) -> DemoResult:
    """The main job: train, validate, convert, verify, validate the deploy form, benchmark, export, report."""
    out = Path(out).resolve()
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = stage_start = time.perf_counter()
    steps = 9

    def stage(i: int, msg: str) -> None:
        nonlocal stage_start
        now = time.perf_counter()
        _say(progress, f"\n[{i}/{steps}] {msg}  (elapsed {now - start:.0f}s)")
        stage_start = now

    def done(key: str) -> None:
        seconds[key] = time.perf_counter() - stage_start

    stage(1, "data")
    if data is None:
        prepared = prepare_deepforest(tile=imgsz, progress=progress)
        _say(progress, prepared.summary())
        data_yaml, data_desc = (
            prepared.yaml,
            (
                f"DeepForest tree crowns: train {prepared.splits['train'].images} tiles, "
                f"val {prepared.splits['val'].images} tiles"
            ),
        )
    else:
        data_yaml, data_desc = Path(data).resolve(), str(data)
    done("data")

    stage(2, f"train {model} for {epochs} epochs at {imgsz}px on {device}")
    # nbs=batch: one optimizer step per batch. Ultralytics' default (nbs=64) accumulates 64 images per
    # step, which on ~100 tiles leaves ~1.5 steps per epoch and a detector that learns nothing in minutes.
    run = train(
        model, data_yaml, epochs, imgsz, batch, device, project=out, name="train", exist_ok=True,
        nbs=batch, plots=False, amp=False, seed=0, deterministic=True, progress=progress,
    )  # fmt: skip
    done("train")

    stage(3, "validate the training form (unconverted)")
    maps = {"training form": _validate(_unfused(run.best), data_yaml, imgsz, batch, device, out, "val-train")}
    done("validate training form")

    stage(4, "convert: deploy checkpoint")
    deploy_dir = out / "deploy"
    deploy_pt = deploy_checkpoint(run.best, deploy_dir / f"{Path(model).stem}-deploy.pt")
    _say(progress, f"wrote {deploy_pt}")
    done("convert")

    stage(5, "verify: per block and end to end, fp32 and fp64, on validation images")
    train_form = load(run.best).model.float().eval()
    deploy_form = load(deploy_pt).model.float().eval()
    x = _val_images(data_yaml, imgsz)
    v32 = verify(train_form, x, rtol=1e-4)
    v64 = verify(train_form, x, dtype=torch.float64, rtol=1e-10)
    with torch.no_grad():
        art_abs, art_rel = _rel_error(_first_tensor(train_form(x)), _first_tensor(deploy_form(x)))
    stored = next(torch_load(deploy_pt, map_location="cpu", weights_only=False)["model"].parameters()).dtype
    art_tol = default_rtol(stored)
    _say(progress, f"fp32: {str(v32).splitlines()[0]}\nfp64: {str(v64).splitlines()[0]}")
    done("verify")

    stage(6, "validate the converted form (fp32, in memory) and the deploy checkpoint")
    in_memory = load(run.best)
    convert_model(in_memory.model)
    maps["converted fp32"] = _validate(in_memory, data_yaml, imgsz, batch, device, out, "val-converted")
    maps["converted"] = _validate(load(deploy_pt), data_yaml, imgsz, batch, device, out, "val-deploy")
    gap = {
        form: {k: abs(maps[form][k] - maps["training form"][k]) for k in ("mAP50", "mAP50-95")}
        for form in ("converted fp32", "converted")
    }
    map_tol = {"converted fp32": MAP_TOL, "converted": MAP_TOL if stored != torch.float16 else MAP_TOL_FP16}
    done("validate converted")

    stage(7, f"benchmark: training form vs converted vs plain, batch 1 and {throughput_batch}")
    forms = {"training form": train_form, "converted": deploy_form}
    plain = plain_model(train_form)
    if plain is not None:
        forms[f"plain {plain[0]}"] = plain[1]
    batches = (1, throughput_batch)
    profiles = profile_forms(forms, imgsz, batches, rounds, progress)
    _say(progress, format_profiles(profiles, "training form"))
    done("benchmark")

    stage(8, "export ONNX and check it in onnxruntime")
    onnx_path = Path(load(deploy_pt).export(format="onnx", imgsz=imgsz, simplify=False, device="cpu"))
    onnx_check = check_onnx(onnx_path, deploy_form, x[:1])
    same_ops = None
    if plain is not None:
        plain_pt = deploy_dir / f"plain-{Path(plain[0]).stem}.pt"
        YOLO(plain[0], verbose=False).save(plain_pt)
        plain_onnx = Path(load(plain_pt).export(format="onnx", imgsz=imgsz, simplify=False, device="cpu"))
        same_ops = onnx_ops(plain_onnx) == onnx_check.ops
    done("export")

    stage(9, "report")
    checks = {
        "verify fp32 (per block + end to end)": (
            v32.ok, f"{len(v32.blocks)} blocks, max_rel {v32.max_rel:.2e} (rtol {v32.rtol:.0e})"
        ),
        "verify fp64 (per block + end to end)": (
            v64.ok, f"max_rel {v64.max_rel:.2e} (rtol {v64.rtol:.0e})"
        ),
        "deploy checkpoint vs training form": (
            art_rel <= art_tol,
            f"max_abs {art_abs:.2e}, max_rel {art_rel:.2e} (rtol {art_tol:.0e}: weights stored in "
            f"{str(stored).removeprefix('torch.')}; {len(x)} val images)",
        ),
        "converted (fp32) mAP matches training form": (
            all(g <= map_tol["converted fp32"] for g in gap["converted fp32"].values()),
            ", ".join(f"|d {k}| {g:.4f}" for k, g in gap["converted fp32"].items())
            + f" (tol {map_tol['converted fp32']})",
        ),
        "deploy mAP matches training form": (
            all(g <= map_tol["converted"] for g in gap["converted"].values()),
            ", ".join(f"|d {k}| {g:.4f}" for k, g in gap["converted"].items())
            + f" (tol {map_tol['converted']}, deploy checkpoint in {str(stored).removeprefix('torch.')})",
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
    rows = _summary_rows(profiles, maps, batches)
    table = _text_table([_shown(r) for r in rows])
    seconds["total"] = time.perf_counter() - start
    header = (
        f"reparam demo: {model} on {data_desc}; {epochs} epochs at {imgsz}px on {device}; "
        f"total {seconds['total']:.0f}s"
    )
    check_lines = [f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}" for name, (ok, detail) in checks.items()]
    printed = "\n".join([header, "", table, "", *check_lines])
    result = DemoResult(checks, printed, report, seconds)
    _write_report(result, rows, profiles, run, v32, v64, maps, header, check_lines, onnx_path, deploy_pt)
    _say(progress, f"\n{printed}\n\nreport: {report}")
    return result


def _write_report(
    result: DemoResult,
    rows: list[dict[str, object]],
    profiles: Sequence[FormProfile],
    run: TrainResult,
    v32: VerifyReport,
    v64: VerifyReport,
    maps: Mapping[str, Mapping[str, float]],
    header: str,
    check_lines: Sequence[str],
    onnx_path: Path,
    deploy_pt: Path,
) -> None:
    report = result.report_dir
    write_csv(report / "summary.csv", rows)
    write_csv(report / "latency.csv", profile_rows(profiles, "training form"))
    write_csv(
        report / "blocks.csv",
        [
            {
                "block": a.name,
                "type": a.kind,
                "fp32 max_rel": f"{a.max_rel:.3e}",
                "fp64 max_rel": f"{b.max_rel:.3e}",
            }
            for a, b in zip(v32.blocks, v64.blocks, strict=True)
        ],
    )
    write_csv(report / "validation.csv", [{"form": k, **v} for k, v in maps.items()])
    results = read_results_csv(run.results_csv)
    shutil.copyfile(run.results_csv, report / "results.csv")
    plot_training_curves(results, report / "training_curves.png")
    plot_latency(profiles, report / "latency.png")
    plot_block_errors(
        [b.name for b in v32.blocks],
        {
            "fp32": ([b.max_rel for b in v32.blocks], v32.rtol),
            "fp64": ([b.max_rel for b in v64.blocks], v64.rtol),
        },
        report / "block_error.png",
    )
    worst = sorted(v32.blocks, key=lambda b: b.max_rel, reverse=True)[:10]
    md = [
        "# reparam demo report",
        "",
        header,
        "",
        markdown_table([_shown(r) for r in rows]),
        "",
        "## Checks",
        "",
        *(f"- {line}" for line in check_lines),
        "",
        "## Latency (medians of interleaved rounds; ratios to the training form)",
        "",
        markdown_table(profile_rows(profiles, "training form")),
        "",
        "![latency](latency.png)",
        "",
        "## Training",
        "",
        f"Run folder `{run.save_dir}`; checkpoint `{run.best}`.",
        f"Deploy checkpoint `{deploy_pt}`; ONNX `{onnx_path}`.",
        "",
        "![training curves](training_curves.png)",
        "",
        "## Conversion error per block (worst 10 of fp32; all rows in blocks.csv)",
        "",
        markdown_table(
            [
                {
                    "block": b.name,
                    "type": b.kind,
                    "max_abs": f"{b.max_abs:.2e}",
                    "max_rel": f"{b.max_rel:.2e}",
                }
                for b in worst
            ]
        )
        if worst
        else "no re-parameterizable blocks",
        "",
        "![error per block](block_error.png)",
        "",
        "## Stage times (s)",
        "",
        markdown_table([{k: f"{v:.1f}" for k, v in result.seconds.items()}]),
        "",
    ]
    (report / "summary.md").write_text("\n".join(md))
    (report / "summary.txt").write_text(result.table + "\n")


# ---------------------------------------------------------------- bench


def run_bench(
    models: Sequence[str] = ("yolov8n-orepa.yaml", "yolov8n-repvgg.yaml"),
    imgsz: int = 320,
    batch: int = 8,
    rounds: int = 20,
    train_cost: bool = False,
    out: str | Path = "runs/reparam-bench",
    progress: Progress | None = None,
) -> list[dict[str, object]]:
    """Latency (batch 1 and ``batch``), params and FLOPs of each model's training, converted, plain forms."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    sections = [
        "# reparam bench",
        "",
        f"{imgsz}x{imgsz}, CPU threads {torch.get_num_threads()}, {rounds} rounds",
        "",
    ]
    for name in models:
        _say(progress, f"\n== {name}")
        profiles = profile_forms(model_forms(name), imgsz, (1, batch), rounds, progress)
        _say(progress, format_profiles(profiles, "training form"))
        model_rows = [{"model": name, **r} for r in profile_rows(profiles, "training form")]
        rows += model_rows
        png = plot_latency(profiles, out / f"latency_{Path(name).stem}.png", title=Path(name).stem)
        sections += [f"## {name}", "", markdown_table(model_rows), "", f"![latency]({png.name})", ""]
    write_csv(out / "bench.csv", rows)
    if train_cost:
        from reparam.bench.train_cost import format_train_cost, run_train_cost

        table = run_train_cost(progress=progress)
        write_csv(out / "train_cost.csv", table)
        sections += ["## Training cost per block type", "", markdown_table(table), ""]
        _say(progress, format_train_cost(table))
    (out / "bench.md").write_text("\n".join(sections))
    _say(progress, f"\nreport: {out / 'bench.md'}")
    return rows
