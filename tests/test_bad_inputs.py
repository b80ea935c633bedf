"""Every bad input is named: one table of bad constructor arguments, model YAML rows, verify arguments,
checkpoint files, adoption selectors and command lines. Each case asserts the exception type (CLI: exit
code 2, one error line, no traceback), a message naming the argument and the rule, and that no file in the
working folder was created or changed (a malicious checkpoint would create a marker file)."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # no DNS probe at Ultralytics import: nothing may download

import pytest
import torch
import yaml
from torch import nn

import reparam
from checkpoint_payloads import SystemPayload, TouchPayload
from reparam.blocks import (
    DBB,
    OREPA,
    BepC3,
    BiC,
    C2f_DynamicConv,
    ConvBNAct,
    DynamicConv,
    DynamicConvBNAct,
    OREPA_1x1,
    OREPA_LargeConv,
    QARepVGGBlock,
    RepBlock,
    RepVGGBlock,
    SimCSPSPPF,
    SimSPPF,
    Transpose,
    create_orepa,
    resolve_act,
)
from reparam.checks import SwitchError
from reparam.io import OverwriteRefusedError, UnsafeCheckpointError, load_checkpoint
from reparam.models import efficientrep_backbone, reppan_neck

Action = Callable[[], object]
Setup = Callable[[Path], Action]
BAD_INPUT_EXIT = 2


@dataclass(frozen=True)
class Case:
    """One bad input: ``setup(tmp)`` writes the files it needs and returns the call that must fail with
    ``expect`` (an exception type, or the CLI exit code) and a message matching ``match``."""

    id: str
    setup: Setup
    expect: type[BaseException] | int
    match: str
    reported: str = ""  # a defect outside this test's files, reported to the owner: expected to fail


def call(fn: Callable[..., object], *args: Any, **kwargs: Any) -> Setup:
    return lambda tmp: lambda: fn(*args, **kwargs)


def case(id: str, setup: Setup, expect: type[BaseException] | int, match: str, reported: str = "") -> Case:
    return Case(id, setup, expect, match, reported)


# ----------------------------------------------------------------------------------------- constructors
ACTS = "act accepts True"
CONSTRUCTORS = [
    case("RepVGGBlock-even-k", call(RepVGGBlock, 8, 8, 4), ValueError, r"kernel size k=4 must be odd"),
    case("RepVGGBlock-p-not-k//2", call(RepVGGBlock, 8, 8, 3, 1, 0), ValueError, r"padding p=0 must equal"),
    case("RepVGGBlock-c1-vs-groups", call(RepVGGBlock, 6, 8, 3, 1, None, 4), ValueError,
         r"c1=6 must be divisible by groups g=4"),
    case("RepVGGBlock-c1-negative", call(RepVGGBlock, -1, 8), ValueError,
         r"c1 must be a positive integer, got int -1"),
    case("RepVGGBlock-c2-zero", call(RepVGGBlock, 8, 0), ValueError,
         r"c2 must be a positive integer, got int 0"),
    case("RepVGGBlock-c2-str", call(RepVGGBlock, 8, "16"), ValueError,
         r"c2 must be a positive integer, got str '16'"),
    case("RepVGGBlock-c2-bool", call(RepVGGBlock, 8, True), ValueError,
         r"c2 must be a positive integer, got bool True"),
    case("RepVGGBlock-c2-float", call(RepVGGBlock, 8, 16.0), ValueError,
         r"c2 must be a positive integer, got float 16\.0"),
    case("RepVGGBlock-s-zero", call(RepVGGBlock, 8, 8, 3, 0), ValueError, r"s must be a positive integer"),
    case("RepVGGBlock-act-typo", call(RepVGGBlock, 8, 8, act="relux"), ValueError,
         rf"act='relux' is not an activation; {ACTS}"),
    case("QARepVGGBlock-even-k", call(QARepVGGBlock, 8, 8, 2), ValueError, r"kernel size k=2 must be odd"),
    case("QARepVGGBlock-avg-int", call(QARepVGGBlock, 8, 8, avg=1), SwitchError,
         r"avg must be True or False, got int 1"),
    case("QARepVGGBlock-c2-vs-groups", call(QARepVGGBlock, 8, 10, g=4), ValueError,
         r"c2=10 must be divisible by groups g=4"),
    case("DBB-dilation", call(DBB, 8, 8, 3, d=2), ValueError,
         r"dilation d=2 is not supported: DBB's branches are undilated"),
    case("DBB-p-not-k//2", call(DBB, 8, 8, 3, p=2), ValueError, r"padding p=2 must equal k//2=1"),
    case("DBB-c1-float", call(DBB, 8.0, 8), ValueError, r"c1 must be a positive integer, got float 8\.0"),
    case("OREPA-even-k", call(OREPA, 8, 8, 4), ValueError, r"kernel size k=4 must be odd"),
    case("OREPA-dilation", call(OREPA, 8, 8, 3, d=2), ValueError, r"dilation d=2 is not supported: OREPA"),
    case("OREPA-act-unknown-class", call(OREPA, 8, 8, act="nn.Foo()"), ValueError,
         r"act='nn\.Foo\(\)' is not an activation \(Foo is not in torch\.nn's activations\)"),
    case("OREPA_1x1-k3", call(OREPA_1x1, 8, 8, 3), ValueError, r"OREPA_1x1 needs kernel size k=1, got k=3"),
    case("OREPA_LargeConv-k3", call(OREPA_LargeConv, 8, 8, 3), ValueError,
         r"OREPA_LargeConv needs kernel size k >= 5, got k=3"),
    case("create_orepa-large-k3", call(create_orepa, 8, 8, 3, large=True), ValueError,
         r"needs kernel size k >= 5, got k=3"),
    case("create_orepa-large-k1", call(create_orepa, 8, 8, 1, large=True), ValueError,
         r"large=True needs a kernel size k >= 5, got k=1"),
    case("create_orepa-large-str", call(create_orepa, 8, 8, 5, large="yes"), SwitchError,
         r"large must be True or False, got str 'yes'"),
    case("DynamicConv-num_experts-0", call(DynamicConv, 8, 8, 3, num_experts=0), ValueError,
         r"num_experts must be a positive integer, got int 0"),
    case("DynamicConv-even-k-auto-p", call(DynamicConv, 8, 8, 4), ValueError,
         r"kernel size k=4 must be odd for automatic 'same' padding"),
    case("DynamicConv-p-negative", call(DynamicConv, 8, 8, 3, p=-1), ValueError,
         r"padding p must be a non-negative integer, got -1"),
    case("DynamicConvBNAct-act-bad", call(DynamicConvBNAct, 8, 8, 3, act="bogus"), ValueError,
         rf"act='bogus' is not an activation; {ACTS}"),
    case("C2f_DynamicConv-shortcut-str", call(C2f_DynamicConv, 8, 8, 1, "True"), SwitchError,
         r"shortcut must be True or False, got str 'True'"),
    case("C2f_DynamicConv-n-0", call(C2f_DynamicConv, 8, 8, 0), ValueError, r"n must be a positive integer"),
    case("RepBlock-C2f-style-args", call(RepBlock, 8, 16, 1, True), ValueError,
         r"RepBlock got a C2f-style shortcut flag True in place of `block`.*\[-1, n, RepBlock, \[c2\]\]"),
    case("RepBlock-block-unknown", call(RepBlock, 8, 16, 1, "Foo"), ValueError,
         r"block must be one of RepVGGBlock, QARepVGGBlock, OREPA, ConvBNAct or a module class, got 'Foo'"),
    case("BepC3-C2f-style-args", call(BepC3, 8, 16, 1, True), ValueError,
         r"BepC3 got a C2f-style shortcut flag True in place of `e`"),
    case("SimSPPF-even-k", call(SimSPPF, 8, 8, 4), ValueError, r"kernel size k=4 must be odd"),
    case("SimCSPSPPF-e-zero", call(SimCSPSPPF, 8, 8, 5, 0.0), ValueError,
         r"e must be a positive number, got float 0\.0"),
    case("BiC-c1-int", call(BiC, 8, 8), ValueError,
         r"c1 must be three positive channel counts \(top, same, lower\), got 8"),
    case("BiC-c1-two-inputs", call(BiC, [8, 8], 8), ValueError, r"c1 must be three positive channel counts"),
    case("Transpose-k-zero", call(Transpose, 8, 8, 0), ValueError,
         r"k must be a positive integer, got int 0"),
    case("ConvBNAct-c2-vs-groups", call(ConvBNAct, 8, 9, 3, g=2), ValueError,
         r"c2=9 must be divisible by groups g=2"),
    case("ConvBNAct-c1-negative", call(ConvBNAct, -8, 8), ValueError, r"c1 must be a positive integer"),
    case("efficientrep_backbone-variant", call(efficientrep_backbone, "z"), ValueError,
         r"variant must be one of n, s, m, l, got 'z'"),
    case("efficientrep_backbone-block", call(efficientrep_backbone, "n", block="Foo"), ValueError,
         r"block must be one of .* got 'Foo'"),
    case("efficientrep_backbone-return_p2-str", call(efficientrep_backbone, "n", return_p2="no"), SwitchError,
         r"return_p2 must be True or False, got str 'no'"),
    case("reppan_neck-bic-str", call(reppan_neck, "n", bic="no"), SwitchError,
         r"bic must be True or False, got str 'no'"),
    case("reppan_neck-in_channels-length", call(reppan_neck, "n", in_channels=(32, 64)), ValueError,
         r"in_channels must be 4 positive integers, got \(32, 64\)"),
    case("resolve_act-unknown-name", call(resolve_act, "swishy"), ValueError,
         rf"act='swishy' is not an activation; {ACTS}"),
    case("resolve_act-int", call(resolve_act, 3), ValueError, rf"act=3 is not an activation; {ACTS}"),
    case("resolve_act-code", call(resolve_act, "__import__('os').system('touch pwned')"), ValueError,
         r"act=.*__import__.* is not an activation"),
    case("resolve_act-non-literal-arg", call(resolve_act, "nn.LeakyReLU(x)"), ValueError,
         r"act='nn\.LeakyReLU\(x\)' is not an activation \(argument 'x' is not a literal\)"),
]  # fmt: skip


# ------------------------------------------------------------------------------------------- YAML rows
DETECT = [[-1], 1, "Detect", ["nc"]]


def write_yaml(tmp: Path, cfg: dict, name: str = "bad.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def model_yaml(rows: list, activation: str | None = None) -> dict:
    """A two-class scale-n model with ``rows`` as backbone and a Detect head on the last row."""
    cfg: dict = {"nc": 2, "scales": {"n": [0.33, 0.25, 1024]}, "backbone": rows, "head": [DETECT]}
    if activation is not None:
        cfg["activation"] = activation
    return cfg


def build(cfg: dict) -> Setup:
    def setup(tmp: Path) -> Action:
        pytest.importorskip("ultralytics")
        from ultralytics.nn.tasks import DetectionModel

        import reparam.yolo  # noqa: F401  (registers the blocks)

        path = write_yaml(tmp, cfg)
        return lambda: DetectionModel(str(path), verbose=False)

    return setup


ROW = r"model YAML row {i} of .*bad\.yaml "
TWO_CONVS = [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [32, 3, 2]]]
YAML_ROWS = [
    case("yaml-unknown-block", build(model_yaml([[-1, 1, "RepVGGBlok", [64, 3, 2]]])), ValueError,
         ROW.format(i=0) + r".*unknown module 'RepVGGBlok'.*did you mean RepVGGBlock\?"),
    case("yaml-OREPAConv", build(model_yaml([[-1, 1, "OREPAConv", [64, 3, 2]]])), ValueError,
         ROW.format(i=0) + r".*OREPAConv: did you mean OREPA\?"),
    case("yaml-even-k", build(model_yaml([[-1, 1, "RepVGGBlock", [64, 4, 2]]])), ValueError,
         ROW.format(i=0) + r".*kernel size k=4 must be odd"),
    case("yaml-k-wrong-type", build(model_yaml([[-1, 1, "DBB", [64, "three", 2]]])), ValueError,
         ROW.format(i=0) + r".*k must be a positive integer, got str 'three'"),
    case("yaml-c2-wrong-type", build(model_yaml([[-1, 1, "OREPA", ["sixty", 3, 2]]])), ValueError,
         ROW.format(i=0) + r".*c2='sixty' \(the first argument, output channels\) must be a positive number"),
    case("yaml-BiC-from-not-a-list", build(model_yaml([*TWO_CONVS, [-1, 1, "BiC", [32]]])), ValueError,
         ROW.format(i=2) + r".*'from' must list the input layers \(e\.g\. \[-1, 6, 4\]\), got -1"),
    case("yaml-RepBlock-C2f-style", build(model_yaml([*TWO_CONVS, [-1, 3, "RepBlock", [32, True]]])),
         ValueError, ROW.format(i=2) + r".*RepBlock got a C2f-style shortcut flag True"),
    case("yaml-row-act-typo", build(model_yaml([[-1, 1, "RepVGGBlock", [64, 3, 2, None, 1, 1, "relux"]]])),
         ValueError, ROW.format(i=0) + r".*act='relux' is not an activation"),
    case("yaml-DynamicConv-num_experts-0",
         build(model_yaml([[-1, 1, "DynamicConvBNAct", [64, 3, 2, None, 1, 1, True, 0]]])),
         ValueError, ROW.format(i=0) + r".*num_experts must be a positive integer, got int 0"),
    case("yaml-activation-unknown", build(model_yaml(TWO_CONVS, activation="nn.Swishy()")), ValueError,
         r"model YAML .*activation: 'nn\.Swishy\(\)' is not an activation module"),
    case("yaml-activation-not-a-module", build(model_yaml(TWO_CONVS, activation="len")), ValueError,
         r"model YAML .*activation: 'len' is not an activation module: act='len' is not an activation"),
]  # fmt: skip


# ---------------------------------------------------------------------------------------- verify inputs
def small() -> nn.Module:
    return nn.Sequential(RepVGGBlock(3, 8), OREPA(8, 8)).eval()


def scripted() -> nn.Module:
    return torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval())


def with_model(fn: Callable[..., object], make: Callable[[], Any], **kwargs: Any) -> Setup:
    def setup(tmp: Path) -> Action:
        model = make()
        return lambda: fn(model, **kwargs)

    return setup


TS = r"model is a TorchScript module \(RecursiveScriptModule\): reparam converts the eager nn\.Module"
VERIFY = [
    case("verify-rtol-zero", with_model(reparam.verify, small, rtol=0.0), ValueError,
         r"rtol must be a positive float"),
    case("verify-rtol-negative", with_model(reparam.verify, small, rtol=-1e-4), ValueError,
         r"rtol must be a positive float .*got float -0\.0001"),
    case("verify-rtol-str", with_model(reparam.verify, small, rtol="1e-4"), ValueError,
         r"rtol must be a positive float .*got str '1e-4'"),
    case("verify-rtol-nan", with_model(reparam.verify, small, rtol=float("nan")), ValueError,
         r"rtol must be a positive float \(finite\), got float nan"),
    case("verify-input_shape-zero", with_model(reparam.verify, small, input_shape=(1, 3, 0, 8)), ValueError,
         r"input_shape must be a sequence of positive sizes \(ints\), got \(1, 3, 0, 8\)"),
    case("verify-input_shape-str", with_model(reparam.verify, small, input_shape="1,3,8,8"), ValueError,
         r"input_shape must be a sequence of positive sizes \(ints\), got '1,3,8,8'"),
    case("verify-input_shape-channels", with_model(reparam.verify, small, input_shape=(1, 4, 8, 8)),
         ValueError, r"input_shape=\(1, 4, 8, 8\) does not fit the model .*to have 3 channels"),
    case("verify-dtype-int", with_model(reparam.verify, small, dtype=torch.int64), ValueError,
         r"dtype must be a floating-point torch\.dtype .*got torch\.int64"),
    case("verify-dtype-str", with_model(reparam.verify, small, dtype="float64"), ValueError,
         r"dtype must be a floating-point torch\.dtype .*got 'float64'"),
    case("verify-not-a-module", call(reparam.verify, "model.pt"), TypeError,
         r"model must be an nn\.Module, got str"),
    case("verify-TorchScript", with_model(reparam.verify, scripted), TypeError, TS),
    case("reparameterize-TorchScript", with_model(reparam.reparameterize, scripted), TypeError, TS),
    case("reparameterize-train-mode", with_model(reparam.reparameterize, lambda: small().train()), ValueError,
         r"model is in training mode: call model\.eval\(\) before converting .*allow_train=True"),
    case("reparameterize-inplace-str", with_model(reparam.reparameterize, small, inplace="yes"), SwitchError,
         r"inplace must be True or False, got str 'yes'"),
]  # fmt: skip


# ------------------------------------------------------------------------------------- checkpoint files
def good_state(path: Path) -> None:
    torch.save({"w": torch.randn(256)}, path)


def truncated(path: Path) -> None:
    good_state(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


FILES: dict[str, Callable[[Path], object]] = {
    "missing": lambda p: None,
    "directory": lambda p: p.mkdir(),
    "empty": lambda p: p.write_bytes(b""),
    "truncated": truncated,
    "random-bytes": lambda p: p.write_bytes(bytes(range(256)) * 8),
    "text": lambda p: p.write_text("weights: not a checkpoint\n"),
    "os.system-pickle": lambda p: p.write_bytes(pickle.dumps(SystemPayload(p.parent / "pwned"))),
    "Path.touch-torch.save": lambda p: torch.save({"model": TouchPayload(p.parent / "pwned")}, p),
    "plain-state-dict": good_state,
}


def reader(fn: Callable[[Path], object], kind: str) -> Setup:
    def setup(tmp: Path) -> Action:
        if fn is deploy_checkpoint:
            pytest.importorskip("ultralytics")
        path = tmp / "ckpt.pt"
        FILES[kind](path)
        return lambda: fn(path)

    return setup


def deploy_checkpoint(src: Path, dst: Path | None = None, **kwargs: Any) -> Path:
    from reparam.yolo import deploy_checkpoint as deploy

    return deploy(src, dst, **kwargs)


def into_small(source: object) -> object:
    return reparam.load_weights(small(), source)


def ultralytics_checkpoint(tmp: Path) -> Path:
    """A real (tiny) Ultralytics training checkpoint with reparam blocks."""
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    import reparam.yolo  # noqa: F401

    rows = [[-1, 1, "RepVGGBlock", [16, 3, 2]], [-1, 1, "OREPA", [32, 3, 2]]]
    model = DetectionModel(str(write_yaml(tmp, model_yaml(rows), "tiny.yaml")), verbose=False)
    path = tmp / "best.pt"
    torch.save({"model": model.eval()}, path)
    return path


def deploy_onto(existing: bool) -> Setup:
    def setup(tmp: Path) -> Action:
        src = ultralytics_checkpoint(tmp)
        dst = tmp / "best-deploy.pt"
        if existing:
            dst.write_bytes(b"a file the user has")
        return lambda: deploy_checkpoint(src, dst if existing else src)

    return setup


def unmappable(tmp: Path) -> Action:
    state = small().state_dict()
    state["0.rbr_extra.weight"] = torch.ones(3)
    return lambda: reparam.load_weights(small(), state)


CK = r"checkpoint '.*ckpt\.pt' "
UNREADABLE = CK + r"is not a readable torch checkpoint \(empty, truncated or corrupt\?\)"
UNSAFE = CK + r"asks for {}, which can run code .* not even with trust=True"
CHECKPOINTS = [
    case("load_checkpoint-missing", reader(load_checkpoint, "missing"), ValueError, CK + "does not exist"),
    case("load_checkpoint-directory", reader(load_checkpoint, "directory"), ValueError, CK + "is not a file"),
    case("load_checkpoint-empty", reader(load_checkpoint, "empty"), ValueError, UNREADABLE),
    case("load_checkpoint-truncated", reader(load_checkpoint, "truncated"), ValueError, UNREADABLE),
    case("load_checkpoint-random-bytes", reader(load_checkpoint, "random-bytes"), ValueError, UNREADABLE),
    case("load_checkpoint-text", reader(load_checkpoint, "text"), ValueError, UNREADABLE),
    case("load_checkpoint-os.system-pickle", reader(load_checkpoint, "os.system-pickle"),
         UnsafeCheckpointError,
         UNSAFE.format(r"posix\.system")),
    case("load_checkpoint-Path.touch", reader(load_checkpoint, "Path.touch-torch.save"),
         UnsafeCheckpointError,
         UNSAFE.format(r"builtins\.getattr")),
    case("deploy_checkpoint-missing", reader(deploy_checkpoint, "missing"), ValueError,
         r"src must be an existing checkpoint file, got .*ckpt\.pt"),
    case("deploy_checkpoint-directory", reader(deploy_checkpoint, "directory"), ValueError,
         r"src must be an existing checkpoint file, got .*ckpt\.pt"),
    case("deploy_checkpoint-truncated", reader(deploy_checkpoint, "truncated"), ValueError, UNREADABLE),
    case("deploy_checkpoint-random-bytes", reader(deploy_checkpoint, "random-bytes"), ValueError, UNREADABLE),
    case("deploy_checkpoint-Path.touch", reader(deploy_checkpoint, "Path.touch-torch.save"),
         UnsafeCheckpointError, UNSAFE.format(r"pathlib\.Path")),
    case("deploy_checkpoint-not-ultralytics", reader(deploy_checkpoint, "plain-state-dict"), ValueError,
         r"ckpt\.pt' holds a state dict of \d+ tensors? .*, not an Ultralytics model checkpoint"),
    case("deploy_checkpoint-dst-is-src", deploy_onto(existing=False), ValueError,
         r"dst must differ from src: the training checkpoint stays untouched"),
    case("deploy_checkpoint-dst-exists", deploy_onto(existing=True), OverwriteRefusedError,
         r"best-deploy\.pt' already exists; pass overwrite=True to replace it"),
    case("load_weights-missing", reader(into_small, "missing"), ValueError, CK + "does not exist"),
    case("load_weights-empty", reader(into_small, "empty"), ValueError, UNREADABLE),
    case("load_weights-os.system-pickle", reader(into_small, "os.system-pickle"), UnsafeCheckpointError,
         UNSAFE.format(r"posix\.system")),
    case("load_weights-unmappable-tensor", unmappable, ValueError,
         r"load_weights\(strict=True\): unmapped source tensors: 0\.rbr_extra\.weight"),
    case("load_weights-source-int", with_model(reparam.load_weights, small, state_dict_or_path=3), ValueError,
         r"state_dict_or_path must be a mapping of tensors or a path, got int"),
]  # fmt: skip


# ------------------------------------------------------------------------------------------------ adopt
def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()).eval()


ADOPT = [
    case("adopt-to-unknown", with_model(reparam.adopt, cnn, to="repvggg"), ValueError,
         r"to='repvggg' is not a block family; choose one of \['repvgg', 'qarepvgg', 'dbb', 'orepa', 'dyn"),
    case("adopt-where-unknown-key", with_model(reparam.adopt, cnn, to="dbb", where={"kernal": 3}), ValueError,
         r"where has unknown key\(s\) \['kernal'\]; allowed keys: \['types', 'names', 'kernel', 'stride'\]"),
    case("adopt-where-kernel-str", with_model(reparam.adopt, cnn, to="dbb", where={"kernel": "3"}),
         ValueError,
         r"where\['kernel'\] must be an int or a collection of ints, got '3'"),
    case("adopt-where-types-str", with_model(reparam.adopt, cnn, to="orepa", where={"types": "Conv2d"}),
         ValueError, r"where\['types'\] must be a class or a collection of classes, got 'Conv2d'"),
    case("adopt-where-int", with_model(reparam.adopt, cnn, to="repvgg", where=3), ValueError,
         r"where must be None, a callable \(name, module\) -> bool or a dict .*got int"),
    case("adopt-input_shape-zero", with_model(reparam.adopt, cnn, to="repvgg", input_shape=(1, 3, 0, 8)),
         ValueError, r"input_shape must be positive ints, got \(1, 3, 0, 8\)"),
]  # fmt: skip


# ------------------------------------------------------------------------------------------ command line
def cli(*argv: str, files: Callable[[Path], object] = lambda tmp: None) -> Setup:
    def setup(tmp: Path) -> Action:
        from reparam.cli import main

        files(tmp)
        return lambda: main(list(argv))

    return setup


def random_pt(tmp: Path) -> None:
    FILES["random-bytes"](tmp / "rand.pt")


def folder(name: str) -> Callable[[Path], object]:
    return lambda tmp: (tmp / name).mkdir()


def existing_deploy(tmp: Path) -> None:
    ultralytics_checkpoint(tmp)
    (tmp / "best-deploy.pt").write_bytes(b"a file the user has")


CLI = [
    case("cli-unknown-key", cli("demo", "epoch=3"), BAD_INPUT_EXIT,
         r"reparam demo: error: unknown key 'epoch' for 'reparam demo'; valid keys: model, data, epochs"),
    case("cli-bad-int", cli("bench", "batch=eight"), BAD_INPUT_EXIT,
         r"reparam bench: error: bad value for batch='eight': must be an integer >= 2"),
    case("cli-missing-required-key", cli("verify", "imgsz=64"), BAD_INPUT_EXIT,
         r"reparam verify: error: missing required key model="),
    case("cli-unknown-command", cli("frobnicate"), BAD_INPUT_EXIT,
         r"reparam: error: argument command: invalid choice: 'frobnicate'"),
    case("cli-bad-dtype", cli("verify", "m.pt", "dtype=float16"), BAD_INPUT_EXIT,
         r"bad value for dtype='float16': must be one of float32, float64"),
    case("cli-negative-epochs", cli("train", "yolov8n-orepa.yaml", "epochs=-1"), BAD_INPUT_EXIT,
         r"bad value for epochs='-1': must be an integer >= 1"),
    case("cli-rounds-zero", cli("bench", "rounds=0"), BAD_INPUT_EXIT,
         r"bad value for rounds='0': must be an integer >= 1"),
    case("cli-rtol-negative", cli("verify", "m.pt", "rtol=-1"), BAD_INPUT_EXIT,
         r"bad value for rtol='-1': must be in \(0, 1\]"),
    case("cli-missing-model-file", cli("info", "missing.pt"), BAD_INPUT_EXIT,
         r"reparam info: error: model checkpoint missing\.pt does not exist"),
    case("cli-random-bytes-pt", cli("verify", "rand.pt", files=random_pt), BAD_INPUT_EXIT,
         r"reparam verify: error: checkpoint 'rand\.pt' is not a readable torch checkpoint"),
    case("cli-deploy-random-bytes-pt", cli("deploy", "rand.pt", files=random_pt), BAD_INPUT_EXIT,
         r"reparam deploy: error: .*rand\.pt' is not a readable torch checkpoint"),
    case("cli-model-yaml-without-backbone", cli("info", "bad.yaml", files=lambda t: write_yaml(t, {"nc": 2})),
         BAD_INPUT_EXIT, r"reparam info: error: .*bad\.yaml.*'backbone'"),
    case("cli-deploy-directory", cli("deploy", "sets", files=folder("sets")), BAD_INPUT_EXIT,
         r"reparam deploy: error: ckpt=sets is a directory"),
    case("cli-deploy-out-exists", cli("deploy", "best.pt", "out=best-deploy.pt", files=existing_deploy),
         BAD_INPUT_EXIT, r"reparam deploy: error: 'best-deploy\.pt' already exists; pass overwrite=True"),
    case("cli-data-is-directory", cli("train", "yolov8n-orepa.yaml", "data=sets", files=folder("sets")),
         BAD_INPUT_EXIT, r"reparam train: error: data=sets is a directory, expected a data YAML file"),
    case("cli-data-yaml-missing", cli("train", "yolov8n-orepa.yaml", "data=missing.yaml"), BAD_INPUT_EXIT,
         r"reparam train: error: data YAML missing\.yaml does not exist"),
]  # fmt: skip

CASES = CONSTRUCTORS + YAML_ROWS + VERIFY + CHECKPOINTS + ADOPT + CLI


# ------------------------------------------------------------------------------------------------- checks
def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` with (is a folder, size, mtime in ns): any write shows up as a change."""
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def exit_code(action: Action) -> object:
    """The exit code of a ``reparam.cli.main`` call, whether it returns it or argparse raises SystemExit."""
    try:
        return action()
    except SystemExit as e:
        return e.code


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of stderr."""
    return [line for line in stderr.splitlines() if line.strip()]


def test_case_ids_are_unique_and_the_table_is_large() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 45


def params(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.reported)] * bool(c.reported))
        for c in cases
    ]


@pytest.mark.parametrize("bad", params(CASES))
def test_bad_input_is_named_and_writes_nothing(
    bad: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # stray outputs of a command land here and are seen by the snapshot
    action = bad.setup(tmp_path)
    capsys.readouterr()
    before = snapshot(tmp_path)
    if isinstance(bad.expect, int):
        assert exit_code(action) == bad.expect
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        lines = error_lines(err)
        assert len(lines) == 1, err
        assert re.search(bad.match, lines[0]), lines[0]
    else:
        with pytest.raises(bad.expect) as info:
            action()
        assert type(info.value) is bad.expect, repr(info.value)
        assert re.search(bad.match, str(info.value)), str(info.value)
    assert snapshot(tmp_path) == before
