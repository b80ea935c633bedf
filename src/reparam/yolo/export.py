"""Ultralytics export made atomic: it writes into a temporary folder next to the target, and the result (a
file or a ``_<fmt>_model`` folder) is renamed into place only when the export succeeded, so a failed or
interrupted export (a full disk, a file size limit) leaves any previous export untouched."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ultralytics import YOLO
from ultralytics.utils import checks

from reparam.checks import strict_bools
from reparam.io import OverwriteRefusedError, atomic_path
from reparam.text import first_line
from reparam.yolo.safety import ultralytics_safe_load

__all__ = [
    "DiskFullError",
    "check_target",
    "export_atomic",
    "export_suffix",
    "format_arguments",
    "out_of_space",
]

_DISK_FULL = {errno.EFBIG, errno.ENOSPC, errno.EDQUOT}
# what out-of-space looks like when a C++ writer reports it (OpenVINO's serializer says only "iostream error")
_DISK_FULL_TEXT = ("file too large", "no space left on device", "disk quota exceeded", "iostream error")


class DiskFullError(ValueError):
    """A write failed for lack of space (full disk, quota or file size limit); nothing was replaced."""


def _table() -> dict[str, tuple[str, list[str]]]:
    from ultralytics.engine.exporter import export_formats

    t = export_formats()
    rows = zip(t["Argument"], t["Suffix"], t["Arguments"], strict=True)
    return {fmt: (suffix, list(args)) for fmt, suffix, args in rows if fmt != "-"}


def export_suffix(format: str) -> str:
    """The suffix Ultralytics gives an export: ``.onnx``-like for a file, ``_<fmt>_model`` for a folder.

    ValueError naming the valid formats for anything else (aliases are not accepted)."""
    table = _table()
    if format.lower() not in table:
        raise ValueError(f"format={format!r} is not an Ultralytics export format; one of: {', '.join(table)}")
    return table[format.lower()][0]


def format_arguments(format: str) -> list[str]:
    """The export arguments Ultralytics accepts for ``format`` (others are refused by its validator)."""
    export_suffix(format)
    return _table()[format.lower()][1]


@strict_bools
def check_target(out: str | Path, format: str, overwrite: bool) -> Path:
    """Refuse, before any work, an output path that cannot receive ``format``: a name ending in a path
    separator, a directory where a file goes (or a file where a folder goes), an existing export without
    ``overwrite=True``."""
    name, target = str(out), Path(out)
    if name.endswith(("/", os.sep)) or target.name in ("", ".", ".."):
        raise ValueError(f"out={name!r} names a folder; give the export's file name (e.g. model.onnx)")
    folder = not export_suffix(format).startswith(".")
    if target.is_dir() and not folder:
        raise ValueError(f"out={name!r} is a directory; give the export's file name (e.g. model.onnx)")
    if target.exists() and not target.is_dir() and folder:
        raise ValueError(f"out={name!r} is a file; format={format} writes a folder")
    if target.exists() and not overwrite:
        raise OverwriteRefusedError(f"{name!r} already exists; pass overwrite=True to replace it")
    return target


def _disk_full(error: BaseException) -> OSError | None:
    """The out-of-space error behind ``error`` (its cause/context chain, or torch's wrapped message)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return seen
        if any(t in str(seen).lower() for t in _DISK_FULL_TEXT):
            return OSError(errno.ENOSPC, first_line(seen))
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def out_of_space(target: Path) -> Iterator[None]:
    """Turn a write failing for lack of space (whatever wraps it) into a one-line :class:`DiskFullError`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        full = _disk_full(e)
        if full is None:
            raise
        raise DiskFullError(
            f"export to {target} failed writing ({full.strerror or first_line(full)}: out of space or over a "
            "file size limit); any previous export there is unchanged"
        ) from e


@contextlib.contextmanager
def _stage(target: Path) -> Iterator[Path]:
    """A temporary folder next to ``target`` (same file system, so the final move is a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_folder(new: Path, target: Path, overwrite: bool, stage: Path) -> None:
    """Rename folder ``new`` onto ``target``; a previous ``target`` is moved aside first and restored if the
    rename fails, then deleted."""
    if not target.exists():
        os.rename(new, target)
        return
    if not overwrite:
        raise OverwriteRefusedError(f"{str(target)!r} already exists; pass overwrite=True to replace it")
    previous = stage / ".previous"
    os.rename(target, previous)
    try:
        os.rename(new, target)
    except OSError:
        os.rename(previous, target)
        raise


def _run(net: YOLO, stage: Path, stem: str, trust: bool, args: dict[str, Any]) -> Path:
    """Ultralytics' export of ``net`` written inside ``stage`` (it names outputs after the model's file)."""
    model = net.model
    before = getattr(model, "pt_path", None)
    model.pt_path = str(stage / f"{stem}.pt")
    logger = logging.getLogger("ultralytics")
    level, autoinstall = logger.level, checks.AUTOINSTALL
    logger.setLevel(logging.WARNING)  # its success lines name the temporary folder, which is gone after
    checks.AUTOINSTALL = False  # never pip-install a format's packages at run time
    try:
        with ultralytics_safe_load(trust):
            return Path(net.export(**args))
    except AssertionError as e:  # Ultralytics validates its arguments with assert
        raise ValueError(f"format={args.get('format')}: {first_line(e).removeprefix('ERROR ❌️ ')}") from None
    except ImportError as e:
        raise ValueError(
            f"format={args.get('format')} needs a package that is not installed ({first_line(e)}); "
            "install it (reparam installs nothing at run time)"
        ) from None
    finally:
        checks.AUTOINSTALL = autoinstall
        logger.setLevel(level)
        if before is None:
            del model.pt_path
        else:
            model.pt_path = before


@strict_bools
def export_atomic(
    net: YOLO, target: Path, *, overwrite: bool = False, trust: bool = False, **args: Any
) -> Path:
    """``net.export(**args)`` written to ``target`` (a file or, for folder formats, a folder) atomically.

    Ultralytics' argument asserts become a one-line ValueError; a full disk or file size limit raises
    :class:`DiskFullError` and leaves any previous ``target`` as it was.
    """
    fmt = str(args.get("format", "")).lower()
    check_target(target, fmt, overwrite)
    with out_of_space(target), _stage(target) as stage:
        suffix = export_suffix(fmt)
        stem = target.stem if suffix.startswith(".") else target.name.split("_")[0] or "model"
        made = _run(net, stage, stem, trust, args)
        if made.is_dir():
            _swap_folder(made, target, overwrite, stage)
        else:
            with atomic_path(target, overwrite=overwrite) as tmp:
                os.replace(made, tmp)
    return target
