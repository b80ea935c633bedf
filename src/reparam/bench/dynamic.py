"""DynamicConv measures: MACs per part (what Ultralytics' GFLOPs count for it) and latency vs timm."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam.bench.latency import Timing, compare_latency
from reparam.blocks.dynamic import DynamicConv
from reparam.verification import relative_error

__all__ = [
    "YOLO_LAYERS",
    "CondConvReference",
    "DynamicConvMacs",
    "DynamicLatencyRow",
    "LayerShape",
    "OnnxLatencyRow",
    "compare_dynamic_latency",
    "compare_dynamic_onnx_latency",
    "dynamic_conv_macs",
    "dynamic_layer_macs",
    "format_dynamic_latency",
    "format_onnx_latency",
]


@dataclass(frozen=True)
class DynamicConvMacs:
    """Multiply-accumulates of one DynamicConv call, by part. FLOPs (Ultralytics' convention) = 2 * MACs."""

    pool: int
    router: int
    aggregate: int
    conv: int

    @property
    def total(self) -> int:
        """All MACs of the layer."""
        return self.pool + self.router + self.aggregate + self.conv


def dynamic_conv_macs(m: DynamicConv, input_shape: tuple[int, int, int, int]) -> DynamicConvMacs:
    """MACs of ``m`` on an input ``(B, c1, H, W)``: GAP, router Linear, expert aggregation, and the conv.

    Both algorithms aggregate then convolve: the conv part equals a static conv of the same shape (as a
    matmul in ``unfold``), aggregation is ``B*E*c2*(c1/g)*k*k`` (+ ``B*E*c2`` for an expert bias); the
    im2col copy of ``unfold`` is not counted. Ultralytics' printed GFLOPs count this total once
    ``reparam.yolo`` is imported (its thop rule, :mod:`reparam.bench.macs`).
    """
    b, c, h, w = input_shape
    if c != m.c1:
        raise ValueError(f"input has {c} channels, the layer expects c1={m.c1}")
    ho = (h + 2 * m.p - m.d * (m.k - 1) - 1) // m.s + 1
    wo = (w + 2 * m.p - m.d * (m.k - 1) - 1) // m.s + 1
    e = m.num_experts
    aggregate = b * e * m.c2 * m.fan_in + (b * e * m.c2 if m.bias is not None else 0)
    return DynamicConvMacs(
        pool=b * c * h * w,
        router=b * e * c,
        aggregate=aggregate,
        conv=b * m.c2 * m.fan_in * ho * wo,
    )


@torch.no_grad()
def dynamic_layer_macs(model: nn.Module, x: Tensor) -> dict[str, DynamicConvMacs]:
    """Run ``model(x)`` once and return the MACs of every DynamicConv call, keyed by module name."""
    found: dict[str, DynamicConvMacs] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, DynamicConv):

            def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
                found[name] = dynamic_conv_macs(mod, tuple(args[0].shape))

            handles.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return found


@dataclass(frozen=True)
class LayerShape:
    """One benchmarked layer: channels, kernel, stride and the square input size."""

    c1: int
    c2: int
    k: int
    s: int
    size: int

    def __str__(self) -> str:
        return f"{self.k}x{self.k} s{self.s} {self.c1}->{self.c2} @{self.size}px"


# YOLO-like layers: the stride-2 3x3 downsampling convs of a nano backbone and a 1x1 neck conv.
YOLO_LAYERS: tuple[LayerShape, ...] = (
    LayerShape(16, 32, 3, 2, 160),
    LayerShape(32, 64, 3, 2, 80),
    LayerShape(64, 128, 3, 2, 40),
    LayerShape(128, 128, 1, 1, 20),
)


@dataclass(frozen=True)
class DynamicLatencyRow:
    """Latencies (ms) of DynamicConv, the timm CondConv2d-based layer and a static conv on one case."""

    layer: LayerShape
    batch: int
    dynamic: Timing
    timm: Timing
    static: Timing

    @property
    def vs_timm(self) -> float:
        """DynamicConv median / timm-based layer median (target <= 1.0)."""
        return self.dynamic.ratio_to(self.timm)

    @property
    def vs_static(self) -> float:
        """DynamicConv median / static conv median (target <= 1.25 at batch 1)."""
        return self.dynamic.ratio_to(self.static)

    @property
    def vs_timm_p10(self) -> float:
        """The same ratio on 10th percentiles: the least-disturbed calls, robust on a busy shared machine."""
        return self.dynamic.p10_ms / self.timm.p10_ms

    @property
    def vs_static_p10(self) -> float:
        """DynamicConv / static conv on 10th percentiles."""
        return self.dynamic.p10_ms / self.static.p10_ms


class CondConvReference(nn.Module):
    """The reference layer: ParameterNet's DynamicConv = ``Linear(c1, E)`` router + timm ``CondConv2d``."""

    def __init__(self, c1: int, c2: int, k: int, s: int, num_experts: int = 4) -> None:
        super().__init__()
        from timm.layers import CondConv2d

        self.routing = nn.Linear(c1, num_experts)
        self.cond_conv = CondConv2d(c1, c2, k, s, padding=k // 2, num_experts=num_experts)

    def forward(self, x: Tensor) -> Tensor:
        gates = torch.sigmoid(self.routing(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        return self.cond_conv(x, gates)


def compare_dynamic_latency(
    layers: Sequence[LayerShape] = YOLO_LAYERS,
    batches: Sequence[int] = (1, 8, 32),
    rounds: int = 20,
    num_experts: int = 4,
    progress: Callable[[str], None] | None = None,
) -> list[DynamicLatencyRow]:
    """Time DynamicConv vs the timm-based layer with the same weights vs a static conv, side by side.

    Outputs of DynamicConv and the reference are checked equal (relative error <= 1e-5) before timing.
    Needs timm.
    """
    rows = []
    for layer in layers:
        torch.manual_seed(0)
        ref = CondConvReference(layer.c1, layer.c2, layer.k, layer.s, num_experts).eval()
        ours = DynamicConv(layer.c1, layer.c2, layer.k, layer.s, num_experts=num_experts).eval()
        ours.load_reference_state_dict(ref.state_dict())
        static = nn.Conv2d(layer.c1, layer.c2, layer.k, layer.s, layer.k // 2, bias=False).eval()
        for batch in batches:
            x = torch.randn(batch, layer.c1, layer.size, layer.size)
            with torch.no_grad():
                want, got = ref(x), ours(x)
            err = relative_error(want, got)[1]  # inf for NaN/Inf anywhere: never passes
            if err > 1e-5:
                raise RuntimeError(f"{layer} batch {batch}: output differs from timm's ({err:.2e})")
            if progress is not None:
                progress(f"{layer} batch {batch}")
            t = compare_latency({"dynamic": ours, "timm": ref, "static": static}, x, rounds=rounds)
            rows.append(DynamicLatencyRow(layer, batch, t["dynamic"], t["timm"], t["static"]))
    return rows


def format_dynamic_latency(rows: Sequence[DynamicLatencyRow]) -> str:
    """A text table of medians and ratios (median and 10th-percentile), then the target checks."""
    w = max(len(str(r.layer)) for r in rows)
    head = f"{'layer':<{w}}  {'batch':>5}  {'dynamic ms':>10}  {'timm ms':>9}  {'static ms':>9}"
    lines = [head + f"  {'vs timm':>7}  {'vs static':>9}  {'p10 vs timm':>11}  {'p10 vs static':>13}"]
    for r in rows:
        lines.append(
            f"{r.layer!s:<{w}}  {r.batch:>5}  {r.dynamic.median_ms:>10.3f}  {r.timm.median_ms:>9.3f}  "
            f"{r.static.median_ms:>9.3f}  {r.vs_timm:>7.3f}  {r.vs_static:>9.3f}  {r.vs_timm_p10:>11.3f}  "
            f"{r.vs_static_p10:>13.3f}"
        )
    b1 = [r for r in rows if r.batch == 1]
    checks = [("vs timm <= 1.00 (all rows)", rows, 1.0, "vs_timm")]
    checks += [("vs static <= 1.25 (batch 1)", b1, 1.25, "vs_static")] if b1 else []
    for label, subset, limit, attr in checks:
        worst = max(getattr(r, attr) for r in subset)
        worst_p10 = max(getattr(r, attr + "_p10") for r in subset)
        lines.append(
            f"target {label}: worst median ratio {worst:.3f} {'PASS' if worst <= limit else 'FAIL'}, "
            f"worst p10 ratio {worst_p10:.3f} {'PASS' if worst_p10 <= limit else 'FAIL'}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class OnnxLatencyRow:
    """onnxruntime medians (ms): dynamic-axes DynamicConv export, fixed-batch export, static conv."""

    layer: LayerShape
    batch: int
    dynamic_axes: Timing
    fixed_batch: Timing
    static: Timing


def _onnx_session(module: nn.Module, x: Tensor, path: Path, dynamic: bool, threads: int) -> Callable:
    """Export ``module`` (legacy exporter; optional dynamic batch/height/width) and return a runner."""
    import onnxruntime as ort

    axes = {"x": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes=axes)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda t: session.run(None, {"x": t.numpy()})


def compare_dynamic_onnx_latency(
    workdir: Path,
    layers: Sequence[LayerShape] = YOLO_LAYERS,
    batches: Sequence[int] = (1, 8),
    rounds: int = 20,
    num_experts: int = 4,
) -> list[OnnxLatencyRow]:
    """Time exported graphs in onnxruntime: the dynamic-axes DynamicConv (``unfold`` path), a fixed-batch
    export (``algorithm="grouped"``, batch frozen into Conv.group) and a static conv. Needs onnxruntime."""
    threads = torch.get_num_threads()
    rows = []
    for i, layer in enumerate(layers):
        torch.manual_seed(0)
        dyn = DynamicConv(layer.c1, layer.c2, layer.k, layer.s, num_experts=num_experts).eval()
        static = nn.Conv2d(layer.c1, layer.c2, layer.k, layer.s, layer.k // 2, bias=False).eval()
        x1 = torch.randn(1, layer.c1, layer.size, layer.size)
        run_dynamic = _onnx_session(dyn, x1, workdir / f"dynamic{i}.onnx", True, threads)
        for batch in batches:
            x = torch.randn(batch, layer.c1, layer.size, layer.size)
            fixed = DynamicConv(layer.c1, layer.c2, layer.k, layer.s, num_experts=num_experts).eval()
            fixed.load_state_dict(dyn.state_dict())
            fixed.algorithm = "grouped"
            run_fixed = _onnx_session(fixed, x, workdir / f"fixed{i}_{batch}.onnx", False, threads)
            run_static = _onnx_session(static, x, workdir / f"static{i}_{batch}.onnx", False, threads)
            t = compare_latency(
                {"dynamic_axes": run_dynamic, "fixed_batch": run_fixed, "static": run_static},
                x,
                rounds=rounds,
            )
            rows.append(OnnxLatencyRow(layer, batch, t["dynamic_axes"], t["fixed_batch"], t["static"]))
    return rows


def format_onnx_latency(rows: Sequence[OnnxLatencyRow]) -> str:
    """A text table of onnxruntime medians and the dynamic-axes export's ratios."""
    w = max(len(str(r.layer)) for r in rows)
    lines = [
        f"{'layer':<{w}}  {'batch':>5}  {'dyn-axes ms':>11}  {'fixed ms':>8}  {'static ms':>9}  "
        f"{'dyn vs fixed':>12}  {'dyn vs static':>13}"
    ]
    for r in rows:
        d = r.dynamic_axes
        lines.append(
            f"{r.layer!s:<{w}}  {r.batch:>5}  {d.median_ms:>11.3f}  {r.fixed_batch.median_ms:>8.3f}  "
            f"{r.static.median_ms:>9.3f}  {d.ratio_to(r.fixed_batch):>12.3f}  {d.ratio_to(r.static):>13.3f}"
        )
    return "\n".join(lines)
