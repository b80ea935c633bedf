"""A mixed-precision Ultralytics training step of re-parameterized detectors (issue 11 item 1).

Ultralytics trains with ``amp=True`` by default on GPUs: its step runs the model and loss under
``torch.autocast`` and scales the loss with a GradScaler. The same step is run here on the CPU (bf16 and
fp16 autocast) and, where a GPU exists, on CUDA in fp16 exactly as Ultralytics does.
"""

from __future__ import annotations

import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

import reparam.yolo  # noqa: F401  (registers the blocks)
from reparam.blocks import OREPA

DEVICES = [("cpu", torch.bfloat16), ("cpu", torch.float16)]
if torch.cuda.is_available():
    DEVICES.append(("cuda", torch.float16))


def _batch(device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "img": torch.rand(2, 3, 64, 64, generator=gen).to(device),
        "cls": torch.tensor([[0.0], [1.0], [0.0]], device=device),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2], [0.6, 0.4, 0.3, 0.5]]).to(device),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0], device=device),
    }


@pytest.mark.slow
@pytest.mark.parametrize(("device", "dtype"), DEVICES, ids=[f"{d}-{str(t)[6:]}" for d, t in DEVICES])
@pytest.mark.parametrize("yaml", ["yolov8n-orepa.yaml", "yolov8n-c2f-dynamicconv.yaml", "yolov8n-dbb.yaml"])
def test_amp_training_step_updates_every_branch(yaml: str, device: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = DetectionModel(yaml, nc=2, verbose=False).to(device).train()
    model.args = get_cfg()  # the hyperparameters (loss gains) Ultralytics' trainer attaches
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # As in Ultralytics' loop, a step whose scaled gradients overflow fp16 is skipped by the GradScaler,
    # which halves its scale (2**16 at start): OREPA's default init (init_hyper_para=0.2, a kernel at the
    # plain conv's scale) needs one halving in fp16 here; at most two skipped steps are allowed.
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype):
            loss, items = model.loss(_batch(device))
        parts = list(items.values()) if isinstance(items, dict) else [items]
        assert all(torch.isfinite(t).all() for t in [loss, *parts])
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.scale(loss.sum()).backward()
        scaler.step(opt)
        scaler.update()
        if not scaler.is_enabled() or scaler.get_scale() >= scale:  # the step was taken
            break
    assert not scaler.is_enabled() or scale >= 2.0**14, scale
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}  # DFL's fixed conv is frozen
    missing = [n for n, p in trained.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name  # autocast keeps fp32 master weights
    orepa = [n for n, m in model.named_modules() if isinstance(m, OREPA)]
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    for block in orepa:  # every OREPA branch parameter was updated; the prior's factor waits one step, since
        # the paper initialises its scale to 0 (its scale row, in `vector`, moves at once)
        params = {n for n, _ in model.named_parameters() if n.startswith(block + ".gen.")}
        assert {n for n in moved if n.startswith(block + ".gen.")} == params - {block + ".gen.weight_prior"}
