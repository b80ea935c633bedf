"""Deploy checkpoints: converted models built only from stock Ultralytics/PyTorch modules.

Ultralytics checkpoints pickle whole modules, so a checkpoint holding reparam classes needs reparam
installed to load. After conversion a RepVGG/QARepVGG/DBB/OREPA block is one conv plus activation,
which is exactly a fused Ultralytics ``Conv``; the deploy checkpoint stores that ``Conv`` instead, and its
YAML row names ``Conv``, so the file loads and predicts where reparam was never installed. Blocks whose
deploy form has no stock equivalent (DynamicConv stays dynamic; BottleRep/BepC3/BiC/SimCSPSPPF keep
their own forward) keep needing reparam at load time.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reparam.blocks.base import ReparamBlock
from reparam.blocks.conv import ConvBNAct
from reparam.blocks.efficientrep import RepBlock, SimSPPF, Transpose
from reparam.blocks.registry import registered_blocks
from reparam.checks import strict_bools
from reparam.io import atomic_path, check_writable, global_name, load_checkpoint
from reparam.yolo.hooks import convert_model

__all__ = ["deploy_checkpoint", "reparam_globals", "to_stock_modules"]


def _stock_conv(conv: nn.Conv2d, act: nn.Module) -> nn.Module:
    """A fused Ultralytics ``Conv`` (no BN, ``forward_fuse``) holding ``conv`` and ``act``."""
    from ultralytics.nn.modules.conv import Conv

    stock = Conv(conv.in_channels, conv.out_channels, 1, act=act)
    stock.conv = conv
    delattr(stock, "bn")
    stock.forward = stock.forward_fuse
    return stock


def _stock_sppf(module: SimSPPF) -> nn.Module | None:
    """SimSPPF is Ultralytics' SPPF (3 pools, no shortcut) once its two convs are stock fused Convs."""
    from ultralytics.nn.modules.block import SPPF

    if not (_is_stock_conv(module.cv1) and _is_stock_conv(module.cv2)):
        return None
    pool = module.m
    stock = SPPF(module.cv1.conv.in_channels, module.cv2.conv.out_channels, pool.kernel_size)
    stock.cv1, stock.cv2, stock.m, stock.n, stock.add = module.cv1, module.cv2, pool, 3, False
    return stock


def _is_stock_conv(module: nn.Module) -> bool:
    return type(module).__module__.startswith("ultralytics.") and not hasattr(module, "bn")


def _stock_equivalent(module: nn.Module) -> nn.Module | None:
    """The stock module equal to a converted reparam module (children already swapped), or None."""
    if isinstance(module, ReparamBlock | ConvBNAct) and module.deployed:
        return _stock_conv(module.conv, module.act)
    if isinstance(module, RepBlock):
        return nn.Sequential(module.conv1, *module.block)
    if isinstance(module, Transpose):
        return module.upsample_transpose
    if isinstance(module, SimSPPF):
        return _stock_sppf(module)
    return None


def _replace(parent: nn.Module) -> None:
    """Swap converted reparam modules for stock ones, children first (post-order)."""
    for name, child in list(parent.named_children()):
        _replace(child)
        stock = _stock_equivalent(child)
        if stock is None:
            continue
        for attr in ("i", "f", "type", "np"):  # parse_model's per-layer bookkeeping
            if hasattr(child, attr):
                setattr(stock, attr, getattr(child, attr))
        if hasattr(stock, "type"):
            stock.type = f"{type(stock).__module__}.{type(stock).__name__}"
            stock.np = sum(p.numel() for p in stock.parameters())
        setattr(parent, name, stock)


def reparam_globals(model: nn.Module) -> list[str]:
    """Sorted class names of the reparam modules still inside ``model``."""
    return sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith("reparam.")})


def to_stock_modules(model: nn.Module) -> nn.Module:
    """Convert an Ultralytics model in place, then swap converted blocks for stock ``Conv`` modules.

    RepBlock becomes an ``nn.Sequential`` of Convs, Transpose its ``nn.ConvTranspose2d``, SimSPPF an
    Ultralytics ``SPPF``. YAML rows of layers that became ``Conv`` are renamed (their arguments keep the
    same meaning), so the recorded architecture is the plain one.
    """
    convert_model(model)
    _replace(model)
    yaml = getattr(model, "yaml", None)
    layers = getattr(model, "model", None)
    if isinstance(yaml, dict) and isinstance(layers, nn.Sequential):
        rows = yaml.get("backbone", []) + yaml.get("head", [])
        for i, layer in enumerate(layers):
            if i < len(rows) and type(layer).__name__ == "Conv" and rows[i][2] != "Conv":
                rows[i][2] = "Conv"
    return model


@strict_bools
def deploy_checkpoint(
    src: str | Path,
    dst: str | Path | None = None,
    standalone: bool = True,
    *,
    overwrite: bool = False,
    trust: bool = False,
) -> Path:
    """Write the deploy form of Ultralytics checkpoint ``src`` to ``dst`` (default ``<src>-deploy.pt``).

    The source file is never modified (it stays usable for resume and fine-tuning). Weights are kept in
    float32 (Ultralytics stores float16): the folded kernels are not rounded again. With ``standalone``
    (default) the result must load without reparam: a model that keeps reparam modules after conversion
    (DynamicConv) raises ValueError, and the written file is proven standalone by loading it weights-only
    with every reparam class off the allow-list before it replaces anything; ``standalone=False`` writes it
    anyway, and it then needs ``import reparam.yolo`` before loading. ``dst`` is written atomically and an
    existing file is refused unless ``overwrite=True``. ``src`` is read weights-only against the
    Ultralytics + reparam allow-list; ``trust=True`` unpickles it fully (for files from a trusted source).
    """
    from reparam.yolo.safety import check_ultralytics_checkpoint, load_ultralytics_checkpoint

    src = Path(src)
    if not src.is_file():
        raise ValueError(f"src must be an existing checkpoint file, got {src}")
    dst = Path(dst) if dst is not None else src.with_name(f"{src.stem}-deploy.pt")
    if dst.resolve() == src.resolve():
        raise ValueError("dst must differ from src: the training checkpoint stays untouched")
    check_writable(dst, overwrite)  # refuse before the (slow) load and conversion
    ckpt: dict[str, Any] = load_ultralytics_checkpoint(src, trust=trust)
    source = check_ultralytics_checkpoint(ckpt, str(src))  # a model, and its YAML checked like any file's
    model = to_stock_modules(copy.deepcopy(source).float().eval())
    remaining = reparam_globals(model)
    if remaining and standalone:
        raise ValueError(
            f"{src}: {', '.join(remaining)} have no stock Ultralytics/PyTorch deploy form (DynamicConv stays "
            "dynamic after conversion), so this model needs reparam at load time; pass standalone=False "
            "to write a converted checkpoint that loads after `import reparam.yolo`"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    note = _load_note(model, remaining)
    out = {k: v for k, v in ckpt.items() if k not in ("ema", "optimizer", "updates", "scaler")}
    out.update(model=model, ema=None, optimizer=None, reparam_deploy={"source": str(src), "fine_tune": note})
    with atomic_path(dst, overwrite=overwrite) as tmp:
        torch.save(out, tmp)
        if standalone:
            _prove_standalone(tmp, dst)
    if note:
        warnings.warn(f"{dst}: {note}", stacklevel=2)
    return dst


def _prove_standalone(path: Path, dst: Path) -> None:
    """Load ``path`` weights-only with every reparam class off the allow-list; ValueError naming a leak."""
    from reparam.yolo.safety import checkpoint_allow_list

    stock = [e for e in checkpoint_allow_list() if not global_name(e).startswith("reparam.")]
    try:
        load_checkpoint(path, allowed=stock)
    except ValueError as e:
        raise ValueError(f"deploy checkpoint {dst} would not load without reparam: {e}") from None


def _load_note(model: nn.Module, remaining: list[str]) -> str:
    """What using the deploy checkpoint needs: loading it, when reparam modules remain (DynamicConv); else
    fine-tuning, which rebuilds the model from its YAML when that names reparam blocks."""
    if remaining:
        return (
            f"it holds reparam modules ({', '.join(remaining)}): loading it (YOLO(path), predict, val, "
            "export) needs reparam installed, and fine-tuning, which rebuilds the model from its YAML, "
            "`import reparam.yolo` first"
        )
    cfg = getattr(model, "yaml", None)
    if not isinstance(cfg, dict):
        return ""
    rows = list(cfg.get("backbone", [])) + list(cfg.get("head", []))
    names = sorted({str(r[2]) for r in rows if len(r) > 2 and str(r[2]) in registered_blocks()})
    if not names:
        return ""
    return (
        "predict, val and export need no reparam, but fine-tuning rebuilds the model from its YAML, whose "
        f"rows {', '.join(names)} have no stock Ultralytics module: `import reparam.yolo` before training"
    )
