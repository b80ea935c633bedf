"""Training cost per block type: step time and peak memory of the same network built with each block.

Three networks, every kxk conv built from the block registry (``get_block``): (a) a ResNet-18-shaped
classifier at 112 px, batch 16, (b) a YOLOv8n-sized backbone (the channel/stride plan of YOLOv8n's
backbone, its 3x3 convs swapped, 1x1 convs and SPPF plain) with a pooled classifier head, 320 px,
batch 8, and (c) a plain stack of eight 3x3 convs (widths 32-256) at 112 px, batch 16, where nothing
but the swapped convs costs time. A step is forward + cross-entropy + backward + SGD (momentum 0.9) step.

Time: all block types of a network live in one process and are stepped in interleaved rounds (a
rotating order), so machine drift hits them alike; medians are reported. Memory: each case runs in a
fresh spawned subprocess that reports its peak resident set size (``VmHWM`` of /proc/self/status, which
unlike ``ru_maxrss`` starts afresh with the new process image) after the training steps minus the same
peak before them (imports, model, data and optimizer already built), i.e. the memory the training
itself adds: activations kept for backward, gradients, optimizer state and temporaries.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from queue import Empty

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam.bench.profile import count_params
from reparam.blocks.base import check_positive
from reparam.blocks.conv import ConvBNAct
from reparam.blocks.registry import get_block
from reparam.text import Progress, say, text_table

__all__ = [
    "BLOCKS",
    "NETWORKS",
    "build_network",
    "conv8",
    "format_train_cost",
    "resnet18_like",
    "run_train_cost",
    "yolov8n_backbone",
]

BLOCKS: dict[str, str] = {"plain": "ConvBNAct", "RepVGG": "RepVGGBlock", "DBB": "DBB", "OREPA": "OREPA"}
"""Block label -> registry name; "plain" is Conv + BN (+ activation)."""

NETWORKS: dict[str, tuple[int, int]] = {
    "resnet18@112": (112, 16),
    "yolov8n-backbone@320": (320, 8),
    "conv8@112": (112, 16),
}
"""Network -> (image size, batch size)."""

TABLE_COLUMNS = (
    "network",
    "block",
    "params_M",
    "step_ms",
    "time_x_plain",
    "train_mem_MB",
    "mem_x_plain",
    "extra_mem_MB",
    "time_x_dbb",
    "extra_mem_x_dbb",
)
"""Columns of :func:`format_train_cost`."""


class _BasicBlock(nn.Module):
    """ResNet basic block: ``relu(conv_bn(relu(conv_bn(x))) + shortcut(x))`` with swappable kxk convs."""

    def __init__(self, block: type[nn.Module], c1: int, c2: int, s: int) -> None:
        super().__init__()
        self.conv1 = block(c1, c2, 3, s, act=nn.ReLU())
        self.conv2 = block(c2, c2, 3, 1, act=False)
        self.shortcut = ConvBNAct(c1, c2, 1, s, act=False) if s != 1 or c1 != c2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def resnet18_like(block: type[nn.Module], num_classes: int = 10) -> nn.Module:
    """ResNet-18 (7x7 stem, 4 stages of 2 basic blocks, 64..512 channels) with every kxk conv a ``block``."""
    layers: list[nn.Module] = [block(3, 64, 7, 2, act=nn.ReLU()), nn.MaxPool2d(3, 2, 1)]
    c1 = 64
    for i, c2 in enumerate((64, 128, 256, 512)):
        layers += [_BasicBlock(block, c1, c2, 1 if i == 0 else 2), _BasicBlock(block, c2, c2, 1)]
        c1 = c2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c1, num_classes)]
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    def __init__(self, block: type[nn.Module], c: int) -> None:
        super().__init__()
        self.cv1 = block(c, c, 3, 1)
        self.cv2 = block(c, c, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.cv2(self.cv1(x))


class _C2f(nn.Module):
    """YOLOv8 C2f: 1x1 split, ``n`` residual 3x3 bottlenecks, concat, 1x1 (3x3 convs swappable)."""

    def __init__(self, block: type[nn.Module], c1: int, c2: int, n: int) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = ConvBNAct(c1, 2 * self.c, 1)
        self.cv2 = ConvBNAct((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(_Bottleneck(block, self.c) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class _SPPF(nn.Module):
    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.cv1 = ConvBNAct(c1, c1 // 2, 1)
        self.cv2 = ConvBNAct(c1 // 2 * 4, c2, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


def yolov8n_backbone(block: type[nn.Module], num_classes: int = 10) -> nn.Module:
    """YOLOv8n's backbone plan (16-32-64-128-256 channels, C2f repeats 1-2-2-1, SPPF) with a pooled head."""
    layers: list[nn.Module] = [block(3, 16, 3, 2), block(16, 32, 3, 2), _C2f(block, 32, 32, 1)]
    for c1, c2, n in ((32, 64, 2), (64, 128, 2), (128, 256, 1)):
        layers += [block(c1, c2, 3, 2), _C2f(block, c2, c2, n)]
    layers += [_SPPF(256, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, num_classes)]
    return nn.Sequential(*layers)


CONV8_PLAN = (
    (3, 32, 2),
    (32, 32, 1),
    (32, 64, 2),
    (64, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
)
"""(c1, c2, stride) of the eight 3x3 convs of :func:`conv8`."""


def conv8(block: type[nn.Module], num_classes: int = 10) -> nn.Module:
    """Eight 3x3 ``block`` layers with ReLU (widths 32-256, four stride-2 stages) and a pooled linear head."""
    layers: list[nn.Module] = [block(c1, c2, 3, s, act=nn.ReLU()) for c1, c2, s in CONV8_PLAN]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(CONV8_PLAN[-1][1], num_classes)]
    return nn.Sequential(*layers)


def build_network(network: str, block_label: str) -> nn.Module:
    """The benchmark network ``network`` (a key of NETWORKS) built with the block labelled ``block_label``."""
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {sorted(NETWORKS)}, got {network!r}")
    if block_label not in BLOCKS:
        raise ValueError(f"block_label must be one of {sorted(BLOCKS)}, got {block_label!r}")
    block = get_block(BLOCKS[block_label])
    if network.startswith("conv8"):
        return conv8(block)
    return resnet18_like(block) if network.startswith("resnet18") else yolov8n_backbone(block)


def _case(
    network: str, block_label: str, size: tuple[int, int], seed: int
) -> tuple[nn.Module, Tensor, Tensor, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    imgsz, batch = size
    model = build_network(network, block_label).train()
    x = torch.randn(batch, 3, imgsz, imgsz)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, x, y, opt


def _step(model: nn.Module, x: Tensor, y: Tensor, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _rss_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB (VmHWM: peak resident set of this process image)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field (peak memory needs Linux)")


def _memory_worker(
    network: str, block_label: str, size: tuple[int, int], steps: int, threads: int, queue: mp.Queue
) -> None:
    torch.set_num_threads(threads)
    model, x, y, opt = _case(network, block_label, size, 0)
    before = _rss_kib("VmHWM")
    for _ in range(steps):
        _step(model, x, y, opt)
    queue.put((_rss_kib("VmHWM") - before) / 1024.0)


def _peak_train_memory_mb(network: str, block_label: str, size: tuple[int, int], steps: int) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_memory_worker, args=(network, block_label, size, steps, torch.get_num_threads(), queue)
    )
    proc.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"memory subprocess for {network}/{block_label} died with exit code {proc.exitcode}"
                ) from None
    proc.join()
    return float(result)


def _step_times_ms(
    network: str,
    labels: Sequence[str],
    size: tuple[int, int],
    rounds: int,
    warmup: int,
    progress: Progress | None,
) -> dict[str, list[float]]:
    cases = {label: _case(network, label, size, 0) for label in labels}
    for label, case in cases.items():
        for _ in range(warmup):
            _step(*case)
        say(progress, f"  warmed up {label}")
    samples: dict[str, list[float]] = {label: [] for label in labels}
    names = list(labels)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for label in order:
            t0 = time.perf_counter()
            _step(*cases[label])
            samples[label].append((time.perf_counter() - t0) * 1e3)
        if (r + 1) % max(1, rounds // 5) == 0:
            say(progress, f"  round {r + 1}/{rounds}")
    return samples


def _median_ratio(samples: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of ``a``'s step time over ``b``'s in the same round (drift cancels)."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))


def run_train_cost(
    networks: Sequence[str] = tuple(NETWORKS),
    blocks: Sequence[str] = tuple(BLOCKS),
    rounds: int = 10,
    warmup: int = 2,
    memory_steps: int = 3,
    progress: Progress | None = None,
    batch: int | None = None,
    imgsz: int | None = None,
) -> list[dict[str, object]]:
    """Measure training step time (median of ``rounds`` interleaved steps) and peak training memory.

    Returns one row per (network, block) with time ratios to "plain" (medians of per-round ratios, so
    machine drift between rounds cancels) and, on the OREPA row, OREPA's step time over DBB's and
    OREPA's extra memory (over plain) over DBB's extra memory. ``batch`` / ``imgsz`` override every
    network's own (e.g. batch 4, or a tiny smoke run).
    """
    check_positive(**{name: v for name, v in (("batch", batch), ("imgsz", imgsz)) if v is not None})
    if rounds < 1 or warmup < 0 or memory_steps < 1:
        raise ValueError(
            f"rounds and memory_steps must be >= 1 and warmup >= 0, got rounds={rounds}, "
            f"warmup={warmup}, memory_steps={memory_steps}"
        )
    if "plain" not in blocks:
        raise ValueError(f"blocks must include 'plain' (the baseline of every ratio), got {list(blocks)}")
    for b in blocks:
        if b not in BLOCKS:
            raise ValueError(f"unknown block label {b!r}; known: {sorted(BLOCKS)}")
    rows: list[dict[str, object]] = []
    for network in networks:
        if network not in NETWORKS:
            raise ValueError(f"network must be one of {sorted(NETWORKS)}, got {network!r}")
        size = (imgsz or NETWORKS[network][0], batch or NETWORKS[network][1])
        say(
            progress,
            f"== {network}: step time, {rounds} interleaved rounds, {torch.get_num_threads()} threads",
        )
        samples = _step_times_ms(network, blocks, size, rounds, warmup, progress)
        medians = ", ".join(f"{b} {statistics.median(t):.0f}" for b, t in samples.items())
        say(progress, f"  median step ms: {medians}")
        memory: dict[str, float] = {}
        for label in blocks:
            say(progress, f"  peak memory {label} (fresh subprocess, {memory_steps} steps)")
            memory[label] = _peak_train_memory_mb(network, label, size, memory_steps)
        med = {label: statistics.median(s) for label, s in samples.items()}
        for label in blocks:
            model = build_network(network, label)
            row: dict[str, object] = {
                "network": network,
                "imgsz": size[0],
                "batch": size[1],
                "block": label,
                "params_M": round(count_params(model) / 1e6, 3),
                "step_ms": round(med[label], 1),
                "step_p10_ms": round(statistics.quantiles(samples[label], n=10)[0], 1)
                if rounds > 1
                else round(med[label], 1),
                "step_p90_ms": round(statistics.quantiles(samples[label], n=10)[-1], 1)
                if rounds > 1
                else round(med[label], 1),
                "time_x_plain": round(_median_ratio(samples, label, "plain"), 3),
                "train_mem_MB": round(memory[label], 1),
                "mem_x_plain": round(memory[label] / memory["plain"], 3),
                "extra_mem_MB": round(memory[label] - memory["plain"], 1),
            }
            if label == "OREPA" and "DBB" in blocks:
                dbb_extra = memory["DBB"] - memory["plain"]
                row["time_x_dbb"] = round(_median_ratio(samples, "OREPA", "DBB"), 3)
                row["extra_mem_x_dbb"] = (
                    round((memory["OREPA"] - memory["plain"]) / dbb_extra, 3)
                    if dbb_extra > 0
                    else float("nan")
                )
            rows.append(row)
    return rows


def format_train_cost(rows: Sequence[dict[str, object]]) -> str:
    """The rows as a fixed-width text table (step-time spread and image/batch sizes omitted)."""
    return text_table(rows, TABLE_COLUMNS)
