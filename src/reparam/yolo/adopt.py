"""Adoption for Ultralytics: turn a trained checkpoint into a reparam training checkpoint that fine-tunes.

:func:`reparam.adopt` replaces the selected ``Conv`` layers in memory; here the selection follows the
model's YAML rows (``where='zoo'``: the rows the matching zoo YAML replaces; ``'all3x3'``: every 3x3
``Conv`` row; or row indices), the replaced rows are renamed in the model's YAML (``Conv [64, 3, 2]`` ->
``OREPA [64, 3, 2]``) because Ultralytics' trainer rebuilds the model from that YAML and then transfers the
weights by name and shape, and the result is proven to rebuild: the YAML gives the same tensors and, with
the adopted weights loaded, the same outputs.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from ultralytics.nn.tasks import BaseModel

from reparam.adoption import FAMILIES, AdoptCheckError, AdoptReport, adopt
from reparam.bench.profile import count_params
from reparam.checks import strict_bools
from reparam.io import atomic_path
from reparam.verification import relative_error
from reparam.yolo.hooks import convert_model
from reparam.yolo.safety import (
    check_model_yaml,
    check_ultralytics_checkpoint,
    load_ultralytics_checkpoint,
    ultralytics_safe_load,
)
from reparam.yolo.zoo import PLAIN_FAMILY, plain_counterpart, zoo_path

__all__ = [
    "FAMILY_BLOCKS",
    "WHERE",
    "AdoptCheckError",
    "adopt_checkpoint",
    "adopt_model",
    "select_rows",
    "zoo_rows",
]

FAMILY_BLOCKS = {
    "repvgg": "RepVGGBlock",
    "qarepvgg": "QARepVGGBlock",
    "dbb": "DBB",
    "orepa": "OREPA",
    "dynamic": "DynamicConvBNAct",
}
"""The YAML name of the block each adoption family builds (what a replaced ``Conv`` row becomes)."""

WHERE = ("zoo", "all3x3")
_ZOO_NAMES = {*FAMILY_BLOCKS.values(), "DynamicConv"}  # zoo rows that stand in for one Conv
_DROPPED = ("ema", "optimizer", "updates", "scaler")  # training state: fine-tuning starts fresh
_SCALE = re.compile(r"^(yolo(?:v)?\d+)[nslmx]?\.ya?ml$")


def _rows(cfg: dict[str, Any]) -> list[list[Any]]:
    return list(cfg.get("backbone", [])) + list(cfg.get("head", []))


def _check_model(model: Any, where: str) -> nn.Module:
    if not (isinstance(model, BaseModel) and isinstance(getattr(model, "yaml", None), dict)):
        raise ValueError(f"{where} holds no Ultralytics model built from a YAML (no model.yaml dict)")
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or len(_rows(model.yaml)) != len(layers):
        raise ValueError(f"{where}: the model's layers do not match the rows of its YAML")
    if model.is_fused():
        raise ValueError(
            f"{where} holds a fused model (BN folded into the convs, as after predict/val); adopt the "
            "training checkpoint (best.pt / last.pt as written by training)"
        )
    return model


def _zoo_candidates(cfg: dict[str, Any]) -> tuple[str, list[str]]:
    """The plain family of a model YAML (``yolov8n.yaml`` -> ``yolov8.yaml``) and its zoo YAMLs."""
    name = Path(str(cfg.get("yaml_file", ""))).name
    m = _SCALE.match(name)
    family = f"{m.group(1)}.yaml" if m else name
    zoo = sorted(z for z, plain in PLAIN_FAMILY.items() if plain in (name, family))
    if not zoo:
        raise ValueError(
            f"where='zoo': no reparam zoo YAML derives from {name or 'this model'} (zoo families: "
            f"{', '.join(sorted(set(PLAIN_FAMILY.values())))}); use where='all3x3' or row indices"
        )
    return family, zoo


def _replaced_rows(model_rows: list[list[Any]], zoo_file: str) -> list[tuple[int, str]] | None:
    """(row, block) pairs where ``zoo_file`` swaps a ``Conv`` row of ``model_rows`` for a one-conv block,
    or None when the zoo YAML differs from the model in any other way (another architecture)."""
    zoo = _rows(yaml.safe_load(zoo_path(zoo_file).read_text()))
    if len(zoo) != len(model_rows):
        return None
    out = []
    for i, (z, row) in enumerate(zip(zoo, model_rows, strict=True)):
        if z == row:
            continue
        if z[2] in _ZOO_NAMES and row[2] == "Conv" and [z[0], z[1], z[3]] == [row[0], row[1], row[3]]:
            out.append((i, z[2]))
        else:
            return None
    return out


def zoo_rows(cfg: dict[str, Any], to: str) -> tuple[list[int], str]:
    """The ``Conv`` rows of model YAML ``cfg`` that the zoo replaces for family ``to``, and which zoo YAML.

    Prefers the zoo YAML that uses ``to``'s block (``yolov8-orepa.yaml`` for orepa); a family without one
    (dynamic on YOLOv8) takes the rows of the first zoo YAML that replaces ``Conv`` rows by one-conv
    blocks. ValueError when the model's rows match no zoo YAML of its family.
    """
    family, candidates = _zoo_candidates(cfg)
    rows = _rows(cfg)
    matches = {z: r for z in candidates if (r := _replaced_rows(rows, z))}
    wanted = {"DynamicConv", "DynamicConvBNAct"} if to == "dynamic" else {FAMILY_BLOCKS[to]}
    for z, replaced in matches.items():
        if {block for _, block in replaced} <= wanted:
            return [i for i, _ in replaced], z
    if matches:
        z, replaced = next(iter(matches.items()))
        return [i for i, _ in replaced], z
    raise ValueError(
        f"where='zoo': the model's YAML rows match none of the {family} zoo YAMLs ({', '.join(candidates)}) "
        "up to Conv rows; use where='all3x3' or row indices"
    )


def _refuse_adopted(rows: list[list[Any]], to: str, all3x3: list[int]) -> None:
    """where='zoo' on a model whose rows already name one-conv reparam blocks (a zoo model or an adopted
    checkpoint): ValueError saying what it holds and what where='all3x3' / row indices would do instead."""
    held = [(i, str(r[2])) for i, r in enumerate(rows) if str(r[2]) in _ZOO_NAMES]
    if not held:
        return
    names = sorted({name for _, name in held})
    block = FAMILY_BLOCKS[to]
    already = f"it already holds {block} blocks" if block in names else f"it holds {', '.join(names)} blocks"
    rest = (
        f"where='all3x3' would replace its {len(all3x3)} remaining 3x3 Conv rows {all3x3} by {block}, "
        "and row indices pick some of them"
        if all3x3
        else "it has no 3x3 Conv row left for where='all3x3' or row indices"
    )
    raise ValueError(
        f"where='zoo': the model's rows {[i for i, _ in held]} are reparam blocks already ({already}), so "
        f"there is no zoo replacement left to make; {rest}"
    )


def select_rows(model: nn.Module, to: str, where: str | Sequence[int]) -> tuple[list[int], str | None]:
    """Row indices of Ultralytics ``model`` to adopt, and the zoo YAML they come from (``where='zoo'``).

    ``where``: 'zoo' (the rows the zoo YAML of the model's family replaces), 'all3x3' (every 3x3 ``Conv``
    row; convs inside C2f/SPPF/Detect are not rows, so a YAML cannot name them) or ``Conv`` row indices.
    """
    rows, layers = _rows(model.yaml), model.model
    if isinstance(where, str):
        all3x3 = [
            i for i, (row, m) in enumerate(zip(rows, layers, strict=True))
            if row[2] == "Conv" and tuple(m.conv.kernel_size) == (3, 3)
        ]  # fmt: skip
        if where == "zoo":
            _refuse_adopted(rows, to, all3x3)
            return zoo_rows(model.yaml, to)
        if where == "all3x3":
            return all3x3, None
        raise ValueError(f"where={where!r} must be one of {list(WHERE)} or a list of Conv row indices")
    if not where or not all(isinstance(i, int) and not isinstance(i, bool) for i in where):
        raise ValueError(f"where={where!r}: row indices must be a non-empty list of ints")
    picked = sorted(set(where))
    bad = [i for i in picked if not 0 <= i < len(rows) or rows[i][2] != "Conv"]
    if bad:
        raise ValueError(
            f"where={list(where)}: row(s) {bad} are not Conv rows of the model's YAML "
            f"(Conv rows: {[i for i, r in enumerate(rows) if r[2] == 'Conv']})"
        )
    return picked, None


def _zoo_name(cfg: dict[str, Any], zoo: str | None) -> None:
    """Name the YAML after the zoo model when the adopted rows are exactly that zoo YAML's rows
    (``yolov8n.yaml`` -> ``yolov8n-orepa.yaml``), so zoo-aware tools find its plain counterpart."""
    if zoo is None or _rows(cfg) != _rows(yaml.safe_load(zoo_path(zoo).read_text())):
        return
    stem = Path(str(cfg.get("yaml_file", ""))).stem
    name = stem + zoo.removeprefix(PLAIN_FAMILY[zoo].removesuffix(".yaml").rstrip("nslmx"))
    try:
        named = name != zoo and plain_counterpart(name) == f"{stem}.yaml"
    except ValueError:  # a model YAML of another name that happens to have the zoo rows
        named = False
    if named:
        cfg["yaml_file"] = name


def _rebuild_check(model: nn.Module, x: torch.Tensor) -> float:
    """Build the model from its YAML as Ultralytics' trainer does, load the weights, return the max relative
    output error against ``model``; AdoptCheckError naming a tensor the YAML builds differently."""
    rebuilt = type(model)(copy.deepcopy(model.yaml), verbose=False).to(x.dtype)
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    built = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if have != built:
        diff = sorted(set(have.items()) ^ set(built.items()))[:3]
        raise AdoptCheckError(f"the adopted model's YAML does not rebuild it: tensors differ, e.g. {diff}")
    rebuilt.load_state_dict(model.state_dict())
    for new, layer in zip(rebuilt.model, model.model, strict=True):
        layer.type, layer.np = new.type, new.np  # parse_model's bookkeeping, as for a YAML-built model
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        return relative_error(model(x), rebuilt(x))[1]


def adopt_model(
    model: nn.Module, to: str, where: str | Sequence[int] = "zoo", *, source: str = "model"
) -> tuple[nn.Module, AdoptReport]:
    """Adopt the selected ``Conv`` rows of Ultralytics ``model`` into ``to`` blocks (a float32 deep copy).

    The copy's YAML names the new blocks, and rebuilding it from that YAML is checked to give the same
    tensors and outputs. The report's notes say which rows, the YAML change, the rebuild error and the
    parameter count of the converted (deploy) form against the original fused. ``source`` names the model
    in error messages. Raises AdoptCheckError (nothing is returned) if either check fails.
    """
    if to not in FAMILIES:
        raise ValueError(f"to={to!r} is not a block family; choose one of {', '.join(FAMILIES)}")
    model = _check_model(model, source)
    picked, zoo = select_rows(model, to, where)
    base = copy.deepcopy(model).float().requires_grad_(True)  # final checkpoints store frozen weights
    adopted, report = adopt(base, to, where={"names": [f"model.{i}" for i in picked]}, inplace=True)
    rows = _rows(adopted.yaml)
    renamed = [int(r.name.split(".")[1]) for r in report.layers]
    for i in renamed:
        rows[i][2] = FAMILY_BLOCKS[to]
    _zoo_name(adopted.yaml, zoo)
    x = torch.randn(report.input_shape, generator=torch.Generator().manual_seed(0))
    rebuild = _rebuild_check(adopted, x)
    how = f"where={where!r}" + (f" (the Conv rows {zoo} replaces)" if zoo else "")
    report.notes += [
        f"selected rows {picked} by {how}; YAML rows renamed Conv -> {FAMILY_BLOCKS[to]}: {renamed} "
        f"(yaml_file {adopted.yaml.get('yaml_file')})",
        f"rebuilt from its YAML (as the trainer does) with these weights: same tensors, max rel error "
        f"{rebuild:.3g}",
        _deploy_note(model, adopted, to),
    ]
    if not report.ok or rebuild > report.rtol:
        raise AdoptCheckError(
            f"{source}: the adopted model does not compute the original's function\n{report}"
        )
    return adopted, report


@strict_bools
def adopt_checkpoint(
    src: str | Path,
    to: str,
    dst: str | Path | None = None,
    where: str | Sequence[int] = "zoo",
    *,
    overwrite: bool = False,
    trust: bool = False,
) -> tuple[Path, AdoptReport]:
    """Write a reparam training checkpoint: Ultralytics checkpoint (or YAML) ``src`` adopted into ``to``.

    The model (EMA if present) is adopted by :func:`adopt_model`; the file keeps Ultralytics' layout and
    ``train_args`` but no optimizer or EMA state, so ``YOLO(dst).train(...)`` fine-tunes it from the adopted
    weights (stored in float32: the start is exact). ``dst`` (default ``<src stem>-<to>.pt`` next to
    ``src``) is written atomically and an existing file is refused unless ``overwrite=True``. ``src`` is
    read weights-only against the Ultralytics + reparam allow-list unless ``trust=True``.
    """
    if to not in FAMILIES:
        raise ValueError(f"to={to!r} is not a block family; choose one of {', '.join(FAMILIES)}")
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_name(f"{src.stem}-{to}.pt")
    if dst.resolve() == src.resolve():
        raise ValueError(f"dst must differ from src ({src}): the original checkpoint stays untouched")
    with atomic_path(dst, overwrite=overwrite) as tmp:  # an existing dst is refused before any work
        ckpt = _read(src, trust)
        adopted, report = adopt_model(ckpt.get("ema") or ckpt.get("model"), to, where, source=str(src))
        out = {k: v for k, v in ckpt.items() if k not in _DROPPED}
        out.update(
            epoch=-1,
            model=adopted,
            ema=None,
            optimizer=None,
            date=datetime.now().astimezone().isoformat(),
            reparam_adopt={"source": str(src), "to": to, "layers": [r.name for r in report.layers]},
        )
        torch.save(out, tmp)
    return dst, report


def _read(src: Path, trust: bool) -> dict[str, Any]:
    """The checkpoint dict of a ``.pt`` file, or a fresh one holding the model a YAML builds."""
    if src.suffix.lower() in (".yaml", ".yml"):
        from ultralytics import YOLO

        if src.is_file():  # a zoo name is read from reparam's own folder
            check_model_yaml(src)
        with ultralytics_safe_load(trust):
            return {"model": YOLO(str(src), verbose=False).model, "train_args": {}}
    if src.suffix.lower() != ".pt":
        raise ValueError(f"src={src}: expected an Ultralytics checkpoint (.pt) or a model YAML")
    if not src.is_file():
        raise ValueError(f"src={src} is not an existing checkpoint file (reparam never downloads weights)")
    ckpt = load_ultralytics_checkpoint(src, trust=trust)
    check_ultralytics_checkpoint(ckpt, str(src))
    return ckpt


def _deploy_note(original: nn.Module, adopted: nn.Module, to: str) -> str:
    fused = count_params(copy.deepcopy(original).float().eval().fuse(verbose=False))
    deploy = count_params(convert_model(copy.deepcopy(adopted).eval()))
    extra = " (DynamicConv stays dynamic: its experts remain)" if to == "dynamic" else ""
    return f"converted (deploy) form: {deploy:,} params; original fused: {fused:,}{extra}"
