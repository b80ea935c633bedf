"""The ``reparam`` command: Ultralytics-style ``key=value`` arguments parsed here, work done by
:mod:`reparam.app` (one module per command).

Every subcommand has ``--help`` listing its keys and defaults. Exit codes: 0 success, 1 a check failed
(verify, export, demo), 2 bad input: an unknown key or a bad value, or a ValueError / missing, unreadable or
wrong-kind file raised by the app for the given arguments, or a module of an extra the command needs
(``needs the yolo extra: pip install "reparam[yolo]"``), printed as one line ``reparam <cmd>: error: ...``
(``reparam --debug <cmd>`` or ``REPARAM_DEBUG=1`` shows the traceback instead). Warnings (e.g. ``imgsz``
rounded up to the stride) print as one line on stderr. Heavy imports (torch, ultralytics) happen only when a
command runs.

Checkpoints are read without running code from them; a file that needs a class off the allow-list is
refused (exit 2, naming it) unless the command line says ``trust=True`` (never taken from the environment).
A file the user names as output is never replaced unless the command line says ``overwrite=True``.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reparam.extras import missing_extra, require
from reparam.options import (
    TRUE,
    Command,
    Key,
    boolean,
    build_parser,
    choice,
    int_at_least,
    name_or_path,
    names,
    number_in,
    optional,
    parse_options,
    path,
    rates,
    seeds,
    text,
)
from reparam.text import first_line

__all__ = ["BAD_INPUT", "COMMANDS", "main", "parse_options"]

# Errors that mean "bad input" (exit 2, one line): bad values, missing or wrong-kind files, checkpoints
# that cannot be unpickled. A failed check returns 1; anything else is a bug and shows its traceback.
BAD_INPUT: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    OSError,  # a path the system refuses (name too long, disk full): the input, not a bug
)


def _print(msg: str) -> None:
    """The progress callback of every command: print at once (long runs report as they go)."""
    print(msg, flush=True)


# ---------------------------------------------------------------- commands


def _keep_freed_memory() -> None:
    """The training commands' malloc setting (:mod:`reparam.app.memory`), said in one line."""
    from reparam.app.memory import keep_freed_memory

    _print(keep_freed_memory())


def _cmd_demo(o: dict[str, Any]) -> int:
    from reparam.app.demo import run_demo

    _keep_freed_memory()
    return 0 if run_demo(**o, progress=_print).ok else 1


def _cmd_data(o: dict[str, Any]) -> int:
    from reparam.app.data import prepare_data

    prepare_data(**o, progress=_print)
    return 0


def _cmd_train(o: dict[str, Any]) -> int:
    from reparam.app.train import train

    _keep_freed_memory()
    result = train(progress=_print, **o)
    _print(f"weights: {result.best}\nconvert for deployment with: reparam deploy {result.best}")
    return 0


def _cmd_deploy(o: dict[str, Any]) -> int:
    from reparam.app.deploy import deploy

    _print(deploy(**o))
    return 0


def _cmd_verify(o: dict[str, Any]) -> int:
    from reparam.app.verify import verify_model

    report = verify_model(**o)
    _print(str(report))
    return 0 if report.ok else 1


def _cmd_export(o: dict[str, Any]) -> int:
    from reparam.app.export import export_model

    result = export_model(**o, progress=_print)
    _print(result.summary())
    return 0 if result.check is None or result.check.ok else 1


def _cmd_val(o: dict[str, Any]) -> int:
    from reparam.app.val import validate

    _print(validate(**o, progress=_print).summary())
    return 0


def _cmd_info(o: dict[str, Any]) -> int:
    from reparam.app.info import describe

    _print(describe(**o))
    return 0


def _cmd_bench(o: dict[str, Any]) -> int:
    from reparam.app.bench import run_bench

    run_bench(**o, progress=_print)
    return 0


def _cmd_adopt(o: dict[str, Any]) -> int:
    from reparam.app.adopt import AdoptCheckError, adopt

    try:
        dst, report = adopt(**o)
    except AdoptCheckError as e:  # a failed check, not bad input: nothing was written
        _print(f"[FAIL] {e}")
        return 1
    _print(f"{report}\n\nwrote {dst}\nfine-tune with: reparam train model={dst} (data and imgsz as before)")
    return 0


def _cmd_study(o: dict[str, Any]) -> int:
    from reparam.app.study import study

    if o["int8"]:
        require("onnx", "onnxruntime")  # before any training
    study(**o, progress=_print)
    return 0


def _ultralytics_keys() -> dict[str, Any]:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return dict(DEFAULT_CFG_DICT)


_MODEL = "a zoo model (e.g. yolov8n-orepa.yaml), an Ultralytics YAML or a .pt checkpoint"
_TRUST = Key(
    "trust",
    boolean,
    False,
    "load .pt files with full pickle, which runs code stored in them: only for files you trust "
    "(else weights-only with reparam's allow-list)",
)
_IMGSZ = Key("imgsz", int_at_least(32), 320, "image size in pixels")
_DEVICE = Key("device", text, "cpu", "torch device: cpu, 0, cuda:0, ...")
_DATA = Key(
    "data",
    optional(name_or_path),
    None,
    "data YAML (default: the DeepForest tree-crown set, see `reparam data`)",
)

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "demo",
            "the main job: train a re-parameterized detector on real data, convert, verify, validate, "
            "benchmark, export; writes a report folder",
            _cmd_demo,
            (
                Key("model", name_or_path, "yolov8n-orepa.yaml", _MODEL),
                _DATA,
                Key("epochs", int_at_least(1), 30, "training epochs"),
                _IMGSZ,
                Key("batch", int_at_least(1), 8, "training batch size (one optimizer step per batch)"),
                Key(
                    "out",
                    path,
                    Path("runs/reparam-demo"),
                    "output folder (training run, deploy/, report/); a re-run replaces the demo's files",
                ),
                _DEVICE,
                Key("rounds", int_at_least(1), 15, "latency rounds per candidate (medians over rounds)"),
                Key(
                    "throughput_batch", int_at_least(2), 8, "batch size of the throughput latency measurement"
                ),
                _TRUST,
                Key(
                    "threads",
                    int_at_least(1),
                    None,
                    "torch CPU threads of training, validation and benchmark (default: every core; "
                    "Ultralytics alone would use cpu_count - 1)",
                ),
            ),
        ),
        Command(
            "train",
            "Ultralytics training with reparam's blocks registered (any Ultralytics train key is accepted)",
            _cmd_train,
            (
                Key("model", name_or_path, None, _MODEL),
                _DATA,
                Key("epochs", int_at_least(1), 25, "training epochs"),
                _IMGSZ,
                Key("batch", int_at_least(1), 16, "batch size"),
                _DEVICE,
                Key("project", path, Path("runs/reparam"), "runs folder"),
                Key("name", text, "train", "run name inside project"),
                _TRUST,
            ),
            positional=("model",),
            required=("model",),
            extra_keys=_ultralytics_keys,
            extra_help="Any other Ultralytics train key (lr0=, optimizer=, seed=, ...) is passed through; "
            "resume= and pretrained= checkpoints are read as model= is (trust= applies to them too).",
        ),
        Command(
            "deploy",
            "write a deploy checkpoint (every block converted) that loads without reparam",
            _cmd_deploy,
            (
                Key("ckpt", path, None, "training checkpoint (.pt)"),
                Key("out", optional(path), None, "output path (default: <ckpt stem>-deploy.pt)"),
                Key("overwrite", boolean, False, "replace the output file if it exists (else: refused)"),
                _TRUST,
            ),
            positional=("ckpt",),
            required=("ckpt",),
        ),
        Command(
            "verify",
            "prove the conversion: training vs converted form, per block and end to end",
            _cmd_verify,
            (
                Key("model", name_or_path, None, _MODEL),
                _IMGSZ,
                Key("batch", int_at_least(1), 1, "batch size of the random input"),
                Key("dtype", choice("float32", "float64"), "float32", "compute dtype (float64: strict)"),
                Key("randomize_bn", boolean, False, "give BNs random statistics first (fresh models)"),
                Key("rtol", optional(number_in(0.0, 1.0)), None, "max relative error (default by dtype)"),
                Key("per_block", boolean, True, "also report every converted block"),
                _TRUST,
            ),
            positional=("model",),
            required=("model",),
        ),
        Command(
            "export",
            "convert and export through Ultralytics; ONNX is checked in onnxruntime",
            _cmd_export,
            (
                Key("model", name_or_path, None, _MODEL),
                Key("format", text, "onnx", "any Ultralytics export format (onnx, torchscript, ...)"),
                _IMGSZ,
                Key("dynamic", boolean, False, "dynamic batch and image size axes"),
                Key("opset", optional(int_at_least(7)), None, "ONNX opset (default: Ultralytics' choice)"),
                Key("check", boolean, True, "compare the ONNX file with PyTorch in onnxruntime"),
                Key(
                    "out",
                    optional(text),
                    None,
                    "output file or folder (default: next to a .pt, or here for a YAML)",
                ),
                Key(
                    "overwrite",
                    boolean,
                    False,
                    "replace an existing export (written next to a .pt, or in the working folder for a YAML)",
                ),
                Key(
                    "int8",
                    boolean,
                    False,
                    "also write INT8: onnx -> <out stem>.int8.onnx (QDQ), openvino -> NNCF",
                ),
                Key(
                    "calib",
                    optional(name_or_path),
                    None,
                    "INT8 calibration: a folder of images, a data YAML or a number of the model's training "
                    "images (default: 128 of them)",
                ),
                _DATA,
                Key("per_channel", boolean, True, "INT8 weights per output channel (else per tensor)"),
                Key(
                    "int8_skip",
                    optional(text),
                    None,
                    "INT8 convs kept in float: auto:K (the K most sensitive; the ranking is saved as CSV) "
                    "or ONNX conv node names",
                ),
                _TRUST,
            ),
            positional=("model",),
            required=("model",),
        ),
        Command(
            "val",
            "Ultralytics validation of any form (.pt, YAML, .onnx, _openvino_model folder) at one setting "
            "(rect=False, batch 1): mAP50 and mAP50-95",
            _cmd_val,
            (
                Key("model", name_or_path, None, _MODEL + ", an .onnx file or an _openvino_model folder"),
                _DATA,
                _IMGSZ,
                _DEVICE,
                _TRUST,
            ),
            positional=("model",),
            required=("model",),
        ),
        Command(
            "info",
            "params and FLOPs of the training and converted forms, and the blocks used",
            _cmd_info,
            (Key("model", name_or_path, None, _MODEL), _IMGSZ, _TRUST),
            positional=("model",),
            required=("model",),
        ),
        Command(
            "bench",
            "side-by-side latency, params and FLOPs: training form vs converted vs plain model",
            _cmd_bench,
            (
                Key("models", names, ["yolov8n-orepa.yaml", "yolov8n-repvgg.yaml"], "comma-separated models"),
                _IMGSZ,
                Key(
                    "batch",
                    int_at_least(2),
                    8,
                    "batch size of the throughput measurement (batch 1 is always run)",
                ),
                Key("rounds", int_at_least(1), 20, "latency rounds per candidate (medians over rounds)"),
                Key(
                    "train_cost", boolean, False, "also measure training step time and memory per block type"
                ),
                Key(
                    "out",
                    path,
                    Path("runs/reparam-bench"),
                    "report folder (Markdown, CSV, PNG; a re-run replaces the report files it wrote there)",
                ),
                _TRUST,
            ),
        ),
        Command(
            "adopt",
            "start from trained weights: replace a checkpoint's Conv layers by re-param blocks that compute "
            "the same function, and write a training checkpoint that fine-tunes",
            _cmd_adopt,
            (
                Key("model", name_or_path, None, "trained Ultralytics checkpoint (.pt) or model YAML"),
                Key("to", text, None, "block family: repvgg, qarepvgg, dbb, orepa or dynamic"),
                Key(
                    "where",
                    text,
                    "zoo",
                    "zoo (the Conv rows the zoo YAML replaces), all3x3 (every 3x3 Conv row) or row indices "
                    "(0,1,3)",
                ),
                Key("out", optional(path), None, "output checkpoint (default: <model stem>-<to>.pt)"),
                Key("overwrite", boolean, False, "replace the output file if it exists (else: refused)"),
                _TRUST,
            ),
            positional=("model",),
            required=("model", "to"),
        ),
        Command(
            "study",
            "does re-parameterization pay off? the same recipe for the plain model and each variant, "
            "several seeds; mean ± std of the deploy form's metric (optionally INT8), cost, latency",
            _cmd_study,
            (
                Key(
                    "task",
                    choice("classification", "detection"),
                    "classification",
                    "classification (Fashion-MNIST, small CNN family) "
                    "or detection (YOLOv8n zoo, tree-crown data)",
                ),
                Key("variants", names, None, "comma-separated variants (default: all of the task)"),
                Key("seeds", seeds, [0, 1, 2], "comma-separated seeds, one run per variant and seed"),
                Key(
                    "epochs",
                    optional(int_at_least(1)),
                    None,
                    "epochs per run (default 3 classification, 30 detection)",
                ),
                Key(
                    "int8",
                    boolean,
                    False,
                    "also quantize each deploy form to INT8 (onnxruntime PTQ, per-channel and per-tensor)",
                ),
                _DEVICE,
                Key(
                    "lrs",
                    optional(rates),
                    None,
                    "comma-separated learning rates swept per variant on a validation split; each variant "
                    "then trains at its best (default 0.05,0.1,0.2,0.4 classification, 0.01,0.04 detection)",
                ),
                Key("sweep_seeds", seeds, [0], "comma-separated seeds of the learning-rate sweep runs"),
                Key(
                    "sweep_epochs",
                    optional(int_at_least(1)),
                    None,
                    "epochs of each sweep run (default: epochs; fewer makes a shorter sweep)",
                ),
                Key(
                    "out",
                    optional(path),
                    None,
                    "report folder (default runs/reparam-study/<task>); the same command again resumes there",
                ),
                Key("overwrite", boolean, False, "start again in out, dropping its recorded runs"),
                Key("threads", int_at_least(1), 1, "torch CPU threads (1 is fastest on a shared 2-core CPU)"),
                Key("report", boolean, False, "only rewrite and print out/study.md from the CSVs in out"),
            ),
        ),
        Command(
            "data",
            "fetch (once) and tile the default DeepForest tree-crown dataset; prints what it made",
            _cmd_data,
            (
                Key("tile", int_at_least(32), 320, "tile size in pixels"),
                Key("overlap", int_at_least(0), 64, "minimum overlap of neighbouring tiles in pixels"),
                Key(
                    "min_visibility",
                    number_in(0.0, 1.0),
                    0.5,
                    "keep a box in a tile if this share of it is inside",
                ),
                Key(
                    "cache",
                    optional(path),
                    None,
                    "cache folder (default: $REPARAM_CACHE or ~/.cache/reparam)",
                ),
                Key("force", boolean, False, "rebuild the tiles even if cached"),
            ),
        ),
    )
}


def _one_line(e: BaseException) -> str:
    """The first line of an error message (the rest, e.g. a traceback hint, is behind ``--debug``)."""
    more = len([line for line in str(e).strip().splitlines() if line.strip()]) > 1
    return first_line(e) + (" (--debug shows more)" if more else "")


def _warnings_to_stderr(command: str) -> logging.Handler:
    """Route the library's warnings (logger ``reparam``) to stderr as ``reparam <cmd>: warning: ...``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"reparam {command}: warning: %(message)s"))
    logging.getLogger("reparam").addHandler(handler)
    return handler


def _needs_extra(command: str, error: ModuleNotFoundError, debug: bool) -> int:
    """A module of an optional extra is missing: one line naming the extra, exit 2 (else: re-raised)."""
    missing = missing_extra(error)
    if missing is None or debug:
        raise error
    print(f"reparam {command}: error: {missing}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reparam`` console script; returns the process exit code.

    Bad input (unknown keys, bad values, unreadable or missing files) exits 2 with one line naming it; with
    ``--debug`` or ``REPARAM_DEBUG=1`` the error is re-raised with its traceback.
    """
    top, parsers = build_parser(COMMANDS)
    ns, extras = top.parse_known_args(argv)
    if ns.command is None:
        if extras:
            top.error(f"unrecognized arguments: {' '.join(extras)}")
        top.print_help(sys.stderr)
        return 2
    cmd = COMMANDS[ns.command]
    if extras:
        parsers[cmd.name].error(
            f"unrecognized arguments: {' '.join(extras)} (arguments are key=value pairs, e.g. imgsz=320)"
        )
    debug = ns.debug or os.environ.get("REPARAM_DEBUG", "").lower() in TRUE
    try:
        options = parse_options(cmd, ns.args)
    except ValueError as e:
        parsers[cmd.name].error(str(e))
    except ModuleNotFoundError as e:  # train's Ultralytics keys need the yolo extra
        return _needs_extra(cmd.name, e, debug)
    handler = _warnings_to_stderr(cmd.name)
    try:
        return cmd.run(options)
    except BAD_INPUT as e:
        if debug:
            raise
        print(f"reparam {cmd.name}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        return _needs_extra(cmd.name, e, debug)
    finally:
        logging.getLogger("reparam").removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
