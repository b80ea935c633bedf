"""Multi-process training (issue 11 item 5): 2-process torch.distributed (gloo, CPU) DDP training of a model
holding every block type equals its single-process emulation, and the result still converts exactly.

What DDP does and the emulation repeats: each rank runs forward on its own half of the batch in train mode
(BN normalises with that half's statistics), gradients are averaged over ranks, every rank takes the same
optimizer step, and before each forward rank 0's buffers (BN running statistics) are broadcast to all ranks.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from reparam import reparameterize, verify
from reparam.blocks import (
    DBB,
    OREPA,
    BepC3,
    ConvBNAct,
    DynamicConvBNAct,
    OREPA_1x1,
    QARepVGGBlock,
    RepBlock,
    RepVGGBlock,
)

WORLD, STEPS, BATCH, C = 2, 3, 4, 8


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        ConvBNAct(3, C, 3, 1),
        RepVGGBlock(C, C),
        QARepVGGBlock(C, C, avg=True),
        DBB(C, C, 3, 2),
        OREPA(C, C),
        OREPA_1x1(C, C, 1),
        DynamicConvBNAct(C, C, 3),
        RepBlock(C, C, 2),
        BepC3(C, C, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(C, 3),
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, WORLD * BATCH, 3, 16, 16, generator=gen)
    y = torch.randint(0, 3, (STEPS, WORLD * BATCH), generator=gen)
    return x, y


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = _data()
        for step in range(STEPS):
            part = slice(rank * BATCH, (rank + 1) * BATCH)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[step, part]), y[step, part]).backward()
            opt.step()
        if rank == 0:
            torch.save(model.module.state_dict(), out)
    finally:
        dist.destroy_process_group()


def _emulate() -> nn.Module:
    """The same training in one process: one replica per rank, averaged gradients, rank 0's buffers."""
    replicas = [_model() for _ in range(WORLD)]
    opts = [torch.optim.SGD(r.parameters(), lr=0.1, momentum=0.9) for r in replicas]
    x, y = _data()
    for step in range(STEPS):
        buffers = dict(replicas[0].named_buffers())
        for r, opt in zip(replicas, opts, strict=True):
            for name, buf in r.named_buffers():
                buf.copy_(buffers[name])
            opt.zero_grad()
        for rank, r in enumerate(replicas):
            part = slice(rank * BATCH, (rank + 1) * BATCH)
            nn.functional.cross_entropy(r(x[step, part]), y[step, part]).backward()
        for params in zip(*(r.parameters() for r in replicas), strict=True):
            mean = torch.stack([p.grad for p in params]).mean(0)
            for p in params:
                p.grad = mean.clone()
        for opt in opts:
            opt.step()
    return replicas[0]


@pytest.mark.slow
def test_two_process_gloo_training_equals_emulation_and_converts(tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    ddp_state = torch.load(out, weights_only=True)
    emulated = _emulate()
    want = emulated.state_dict()
    assert set(ddp_state) == set(want)
    for name, tensor in want.items():
        assert torch.allclose(ddp_state[name].double(), tensor.double(), rtol=1e-4, atol=1e-6), name
    trained = _model()
    trained.load_state_dict(ddp_state)
    trained.eval()
    report = verify(trained, input_shape=(2, 3, 16, 16), dtype=torch.float64)
    assert report.ok and report.max_rel < 1e-10, str(report)
    deployed = reparameterize(copy.deepcopy(trained))
    with torch.no_grad():
        x = torch.randn(2, 3, 16, 16)
        assert torch.allclose(deployed(x), trained(x), rtol=1e-4, atol=1e-5)
