"""Every bool switch of the public API takes True/False only: ``trust="False"`` never unpickles,
``overwrite="no"`` never overwrites. The walker finds every public function and class of reparam (all
subpackages) with a parameter annotated ``bool`` and calls it with the string "False" there: a TypeError
naming the parameter must come before any work (the other arguments are sentinels nothing could use)."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import reparam
from reparam.checks import bool_parameters, check_bool

pytest.importorskip("ultralytics")  # reparam.yolo and reparam.app are walked too

SELF_CHECKING = {"reparam.checks.check_bool"}  # checks its own switch (it is the check)
RESULTS = {  # records reparam returns: their bool fields are results, not switches a caller sets
    "reparam.verification.BlockError",
    "reparam.verification.VerifyReport",
    "reparam.data.deepforest.PreparedDataset",
}


def _public() -> Iterator[tuple[str, Callable]]:
    seen: set[int] = set()
    for info in pkgutil.walk_packages(reparam.__path__, "reparam."):
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
        for name in names:
            obj = getattr(module, name, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or id(obj) in seen:
                continue
            if not getattr(obj, "__module__", "").startswith("reparam"):
                continue
            seen.add(id(obj))
            yield f"{obj.__module__}.{obj.__qualname__}", obj


SWITCHES = [
    (f"{qual}:{param}", obj, param)
    for qual, obj in _public()
    if qual not in RESULTS
    for param in bool_parameters(obj)
]


def test_the_walk_finds_the_known_switches() -> None:
    """The walker sees the switches the issue names (so an empty walk cannot pass)."""
    found = {case for case, _, _ in SWITCHES}
    for expected in (
        "reparam.weights.load_weights:trust",
        "reparam.weights.load_weights:strict",
        "reparam.io.load_checkpoint:trust",
        "reparam.io.atomic_save:overwrite",
        "reparam.convert.reparameterize:inplace",
        "reparam.convert.reparameterize:allow_train",
        "reparam.verification.verify:per_block",
        "reparam.verification.verify:randomize_bn",
        "reparam.adoption.api.adopt:inplace",
        "reparam.yolo.deploy.deploy_checkpoint:standalone",
        "reparam.yolo.deploy.deploy_checkpoint:trust",
        "reparam.yolo.adopt.adopt_checkpoint:overwrite",
        "reparam.app.verify.verify_model:trust",
        "reparam.app.study.study:int8",
        "reparam.bench.int8.quantize_model:per_channel",
    ):
        assert expected in found
    assert len(SWITCHES) >= 60


class _Sentinel:
    """An argument no function can use: any work on it fails with AttributeError/TypeError of its own."""


def _call_with(obj: Callable, param: str, value: object) -> None:
    """``obj`` with ``param=value``, True for every other required switch, a sentinel for every other
    required argument, defaults elsewhere."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    switches = bool_parameters(obj)
    args, kwargs = [], {}
    for p in list(inspect.signature(target).parameters.values())[inspect.isclass(obj) :]:
        v = value if p.name == param else True if p.name in switches else _Sentinel()
        if p.kind is p.POSITIONAL_ONLY:
            args.append(v)
        elif p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and (p.name == param or p.default is p.empty):
            kwargs[p.name] = v
    obj(*args, **kwargs)


@pytest.mark.parametrize(("case", "obj", "param"), SWITCHES, ids=[c for c, _, _ in SWITCHES])
def test_bool_switch_refuses_text(case: str, obj: Callable, param: str) -> None:
    qual = case.split(":")[0]
    assert qual in SELF_CHECKING or param in getattr(obj, "__strict_bools__", ()), (
        f"{qual} does not check its bool parameter {param!r}: decorate it with reparam.checks.strict_bools"
    )
    for bad in ("False", "no", 0, 1, None if bool_parameters(obj)[param] == "bool" else "None"):
        with pytest.raises(TypeError, match=rf"^{param} must be True(, False)? or"):
            _call_with(obj, param, bad)


def test_check_bool_names_the_argument_and_the_value() -> None:
    check_bool("trust", True)
    check_bool("same_ops", None, optional=True)
    with pytest.raises(TypeError, match=r"trust must be True or False, got str 'False'"):
        check_bool("trust", "False")
    with pytest.raises(ValueError, match=r"same_ops must be True, False or None, got int 0"):
        check_bool("same_ops", 0, optional=True)


class Payload:
    """Unpickling calls ``Path.touch`` on a marker file: the test sees whether the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("trust", ["False", "no", "0", 0])
def test_trust_text_never_unpickles(tmp_path: Path, trust: object) -> None:
    from reparam.io import load_checkpoint
    from reparam.weights import load_weights

    marker = tmp_path / "ran"
    ckpt = tmp_path / "hostile.pt"
    ckpt.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    for call in (
        lambda: load_checkpoint(ckpt, trust=trust),
        lambda: load_weights(nn.Conv2d(1, 1, 1), ckpt, trust=trust),
    ):
        with pytest.raises(TypeError, match="trust must be True or False"):
            call()
    assert not marker.exists()


@pytest.mark.parametrize("overwrite", ["no", "False", 0])
def test_overwrite_text_never_overwrites(tmp_path: Path, overwrite: object) -> None:
    from reparam.io import atomic_save, atomic_write_text

    target = tmp_path / "user.txt"
    target.write_bytes(b"precious")
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        atomic_save({"w": torch.zeros(3)}, target, overwrite=overwrite)
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        atomic_write_text("x", target, overwrite=overwrite)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user.txt"]


def test_the_cli_still_parses_bool_text() -> None:
    from reparam.options import boolean

    assert boolean("False") is False and boolean("true") is True and boolean("no") is False
