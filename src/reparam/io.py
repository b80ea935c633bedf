"""Safe file I/O: atomic writes that never replace a file unless asked, and checkpoint reads that never run
code from the file (weights-only unpickling against an allow-list, checked before anything is unpickled)."""

from __future__ import annotations

import _compat_pickle
import contextlib
import io
import os
import pickle
import pickletools
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import torch
from torch import nn

from reparam.checks import strict_bools
from reparam.text import first_line, shorten

__all__ = [
    "TRUST_HINT",
    "AllowEntry",
    "OverwriteRefusedError",
    "UnsafeCheckpointError",
    "atomic_path",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_folder",
    "check_path",
    "check_writable",
    "checkpoint_globals",
    "global_name",
    "load_checkpoint",
    "path_problem",
    "runs_code",
]

AllowEntry = Callable[..., Any] | tuple[Callable[..., Any], str]
"""An allow-list entry as torch takes it: a class/function, or ``(object, "module.Name")`` for an alias."""

TRUST_HINT = "pass trust=True (CLI: trust=True) only if you trust where the file came from"
_CODE_NOTE = "which can run code (a function, or a class of a module that runs programs or touches files)"
_CODE_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "builtins",
        "__builtin__",
        "shutil",
        "importlib",
        "runpy",
        "pty",
        "socket",
        "ctypes",
        "pickle",
        "_pickle",
        "marshal",
        "code",
        "codeop",
        "webbrowser",
        "pathlib",
        "io",
        "_io",
        "tempfile",
        "multiprocessing",
        "threading",
        "_thread",
        "signal",
        "types",
        "functools",
        "operator",
        "inspect",
        "pdb",
        "bdb",
        "timeit",
        "platform",
        "commands",
        "posixpath",
        "ntpath",
        "asyncio",
        "http",
        "urllib",
        "ftplib",
        "smtplib",
        "telnetlib",
        "xmlrpc",
        "zipimport",
        "glob",
        "site",
        "sysconfig",
        "distutils",
        "setuptools",
        "pip",
        "cProfile",
        "profile",
        "trace",
        "doctest",
        "unittest",
        "ensurepip",
        "venv",
        "compileall",
        "py_compile",
        "zipfile",
        "tarfile",
        "shelve",
        "dbm",
        "sqlite3",
        "logging",
        "gc",
        "copyreg",
        "codecs",
        "_codecs",
        "torch.hub",
        "torch.jit",
        "torch.serialization",
        "torch.ops",
        "torch._C",
        "torch.package",
        "torch.utils.cpp_extension",
        "numpy.testing",
        "numpy.f2py",
        "numpy.distutils",
    }
)
_DATA_FUNCTIONS = frozenset(  # functions that only rebuild data, as other tools' checkpoints hold them
    {
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "collections.defaultdict",
        "collections.deque",
        "datetime.datetime",
        "datetime.date",
        "datetime.timedelta",
        "numpy.ndarray",
        "numpy.dtype",
    }
)
MAX_MARK_DEPTH = 10_000
"""Deepest nesting of pickle marks a checkpoint may hold (a module tree nests a few dozen)."""
_LOCK = threading.Lock()  # torch's safe-globals set is process-wide; scope our additions one load at a time


class UnsafeCheckpointError(ValueError):
    """A checkpoint asks for a global (class or function) off the allow-list, so loading it could run code."""


class OverwriteRefusedError(FileExistsError, ValueError):
    """A write would replace an existing file and the caller did not pass ``overwrite=True``."""


# ---------------------------------------------------------------------------------------------- atomic writes
@strict_bools
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path (same folder, same file name) for a writer; on success move it onto ``path``.

    The move is a rename on the same file system, so readers see the old file or the new one, never half of
    one; if the writer raises, the previous file is untouched and the temporary folder is removed.
    """
    target = check_writable(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tmp = tmp_dir / target.name
        yield tmp
        if not tmp.is_file():
            raise RuntimeError(f"the writer did not create {tmp} (it was to become {target})")
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        _commit(tmp, target, overwrite)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@strict_bools
def atomic_write_bytes(data: bytes, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; refuses an existing file unless ``overwrite=True``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@strict_bools
def atomic_write_text(
    text: str, path: str | os.PathLike[str], *, overwrite: bool = False, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` to ``path`` atomically; refuses an existing file unless ``overwrite=True``."""
    return atomic_write_bytes(text.encode(encoding), path, overwrite=overwrite)


@strict_bools
def atomic_save(obj: Any, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """``torch.save`` to ``path`` atomically; refuses an existing file unless ``overwrite=True``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(obj, tmp)
    return Path(path)


MAX_PATH = 4_096
"""Longest path argument accepted (Linux's PATH_MAX); a longer one is refused before any file access."""
MAX_NAME = 255
"""Longest path component accepted (Linux's NAME_MAX)."""


def path_problem(name: str) -> str | None:
    """Why ``name`` cannot be a path (longer than :data:`MAX_PATH` characters, or a component longer than
    :data:`MAX_NAME` bytes: the OS would say "File name too long"), or None."""
    if len(name) > MAX_PATH:
        return f"the path has {len(name):,} characters (at most {MAX_PATH:,})"
    long = next((part for part in Path(name).parts if len(os.fsencode(part)) > MAX_NAME), None)
    if long is not None:
        return f"a path component has {len(os.fsencode(long)):,} bytes (at most {MAX_NAME})"
    return None


def check_path(arg: str, value: str | os.PathLike[str]) -> Path:
    """``value`` as a Path; ValueError naming ``arg=`` when :func:`path_problem` finds one."""
    name = os.fspath(value)
    problem = path_problem(name)
    if problem is not None:
        raise ValueError(f"{arg}={shorten(name, 60)}: {problem}")
    return Path(name)


def check_folder(arg: str, value: str | os.PathLike[str], purpose: str = "") -> Path:
    """``value`` as a folder a command writes into: :func:`check_path`, and ValueError naming ``arg=`` when it
    exists as something else (a file), before any work rather than when the first write fails."""
    path = check_path(arg, value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{arg}={path} is a file, expected a folder{' for ' + purpose if purpose else ''}")
    return path


@strict_bools
def check_writable(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """``path`` as a Path if a writer may create it; ValueError for a directory, OverwriteRefusedError for an
    existing file without ``overwrite=True``. Callers check before expensive work; the write checks again."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"output path {str(target)!r} is a directory; give a file name")
    if target.exists() and not overwrite:
        raise _exists(target)
    return target


def _exists(target: Path) -> OverwriteRefusedError:
    return OverwriteRefusedError(f"{str(target)!r} already exists; pass overwrite=True to replace it")


def _commit(tmp: Path, target: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, target)
    else:
        try:
            os.link(tmp, target)  # fails if the file appeared while we wrote: never clobber it
        except FileExistsError:
            raise _exists(target) from None
        except OSError:  # a file system without hard links
            if target.exists():
                raise _exists(target) from None
            os.replace(tmp, target)
    with contextlib.suppress(OSError):  # persist the rename itself (POSIX; not possible on Windows)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------- checkpoint reads
@strict_bools
def load_checkpoint(
    path: str | os.PathLike[str], *, trust: bool = False, allowed: Iterable[AllowEntry] = ()
) -> Any:
    """Load a ``torch.save`` file on the CPU without running code from it.

    The pickle is read statically first: every global it asks for must be on torch's weights-only set or
    in ``allowed``, and it may not call a module class's constructor; otherwise ``UnsafeCheckpointError``
    names the first offending global before anything is unpickled. ``trust=True`` loads with full pickle
    (which runs the file's code).
    Unreadable files (missing, a directory, truncated, corrupt, not a checkpoint) raise ``ValueError``.
    """
    file = _readable(path)
    if trust:
        return _load_trusted(file)
    table = {global_name(entry): entry for entry in allowed}
    defaults = _weights_only_defaults()
    names, constructed = _scan_file(file)
    unlisted = [name for name in names if name not in defaults and name not in table]
    code = next((name for name in unlisted if runs_code(name)), None)
    if code is not None:
        raise UnsafeCheckpointError(
            f"checkpoint {str(file)!r} asks for {code}, {_CODE_NOTE}; refused: this file was made to run "
            "code (do not load it, not even with trust=True)"
        )
    if unlisted:
        raise UnsafeCheckpointError(
            f"checkpoint {str(file)!r} asks for {unlisted[0]}, which is not on the allow-list of classes a "
            f"checkpoint may load; {TRUST_HINT}"
        )
    for name in constructed:
        obj = _target(table[name]) if name in table else None
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            raise UnsafeCheckpointError(
                f"checkpoint {str(file)!r} calls the constructor of {name} (torch.save never does it: "
                "saved models are rebuilt without constructors, which build from the file's text); refused"
            )
    if not zipfile.is_zipfile(file):
        return _load_legacy(file, defaults | {name: _target(table[name]) for name in names if name in table})
    return _load_weights_only(file, [table[n] for n in dict.fromkeys(names) if n in table])


def runs_code(name: str) -> bool:
    """Whether global ``name`` (``module.Name``) is a function or a class of a module that runs code or
    touches the system (os, subprocess, builtins, importlib, pathlib, ...): no checkpoint's data needs one,
    so a file asking for it is hostile rather than written by another tool."""
    module, _, attr = name.rpartition(".")
    if name.startswith("<") or any(module == m or module.startswith(f"{m}.") for m in _CODE_MODULES):
        return True
    return attr.lstrip("_")[:1].islower() and name not in _DATA_FUNCTIONS


def checkpoint_globals(path: str | os.PathLike[str]) -> list[str]:
    """Every global (``module.Name``) a ``torch.save`` file or plain pickle asks for, in first-use order,
    read statically (nothing is unpickled). Raises ``ValueError`` for unreadable files."""
    return _scan_file(_readable(path))[0]


def global_name(entry: AllowEntry) -> str:
    """The ``module.Name`` under which an allow-list entry is looked up (torch's own convention)."""
    if isinstance(entry, tuple):
        return entry[1]
    return f"{getattr(entry, '__module__', '')}.{getattr(entry, '__qualname__', '')}"


def _target(entry: AllowEntry) -> Any:
    return entry[0] if isinstance(entry, tuple) else entry


def _readable(path: str | os.PathLike[str]) -> Path:
    file = Path(path)
    if not file.exists():
        raise ValueError(f"checkpoint {str(file)!r} does not exist")
    if not file.is_file():
        raise ValueError(f"checkpoint {str(file)!r} is not a file")
    return file


def _load_weights_only(file: Path, entries: list[AllowEntry]) -> Any:
    with _LOCK:
        registered = list(torch.serialization.get_safe_globals())
        ours = {global_name(e) for e in entries}
        # A process-wide entry of the same name (Ultralytics registers numpy.dtype unchecked) would compete
        # with ours in torch's lookup: it is set aside for this load and put back afterwards.
        kept = [e for e in registered if e in entries or global_name(e) not in ours]
        try:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(kept + [e for e in entries if e not in kept])
            return torch.load(file, map_location="cpu", weights_only=True)
        except UnsafeCheckpointError as e:  # an allow-list entry's own check (e.g. a numpy dtype's size)
            raise UnsafeCheckpointError(f"checkpoint {str(file)!r} {e}") from None
        except pickle.UnpicklingError as e:
            hint = "refused" if "Unsupported operand" in str(e) else TRUST_HINT
            raise UnsafeCheckpointError(
                f"checkpoint {str(file)!r} cannot be loaded weights-only ({first_line(e)}); {hint}"
            ) from e
        except Exception as e:  # weights-only unpickling runs no code from the file: any error is the file's
            raise _unreadable(file, e) from e
        finally:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(registered)


class _NoUnpickler(pickle.Unpickler):
    """Python's unpickler with no globals at all (the base of the restricted legacy loader)."""

    allowed: ClassVar[dict[str, Any]] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = _mapped(module, name)
        if full not in self.allowed:
            raise pickle.UnpicklingError(f"{full} is not on the allow-list")
        return self.allowed[full]


def _load_legacy(file: Path, allowed: dict[str, Any]) -> Any:
    """A legacy (non-zip) ``torch.save`` file, already scanned: torch's weights-only unpickler refuses the
    module records such files hold, so Python's unpickler runs with globals restricted to ``allowed``
    (torch's weights-only defaults and the allow-list entries the scan found)."""
    unpickler = type("_Restricted", (_NoUnpickler,), {"allowed": allowed})
    module = type(pickle)("reparam_restricted_pickle")
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.load = lambda fh, **kw: unpickler(fh, **kw).load()  # type: ignore[attr-defined]
    try:
        return torch.load(file, map_location="cpu", weights_only=False, pickle_module=module)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"checkpoint {str(file)!r} {e}") from None
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"checkpoint {str(file)!r} cannot be loaded ({first_line(e)}); refused"
        ) from e
    except Exception as e:
        raise _unreadable(file, e) from e


def _weights_only_defaults() -> dict[str, Any]:
    from torch import _weights_only_unpickler

    return dict(_weights_only_unpickler._get_allowed_globals())


def _load_trusted(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise ValueError(f"checkpoint {str(file)!r} needs module {e.name!r}, which is not installed") from e
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise _unreadable(file, e) from e


def _unreadable(file: Path, error: BaseException) -> ValueError:
    return ValueError(
        f"checkpoint {str(file)!r} is not a readable torch checkpoint (empty, truncated or corrupt?): "
        f"{type(error).__name__}: {first_line(error)}"
    )


# ------------------------------------------------------------------------------------ static pickle scanning
class _Global(str):
    """A global pushed on the simulated pickle stack (kept apart from plain strings)."""


_MARK = object()


class _NotACheckpointError(Exception):
    """A readable file of another kind (its message completes "checkpoint 'x' ...")."""


def _scan_file(file: Path) -> tuple[list[str], list[str]]:
    """Globals asked for (first-use order) and globals called as constructors, zip or legacy torch file."""
    try:
        with file.open("rb") as fh:
            if fh.read(4) == b"PK\x03\x04":
                return _scan_zip(file)
        # In memory: a random length prefix then reads what is there instead of allocating its size.
        return _scan_legacy(io.BytesIO(file.read_bytes()))
    except _NotACheckpointError as e:
        raise ValueError(f"checkpoint {str(file)!r} {e}") from None
    except (
        ValueError, IndexError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, MemoryError,
        OverflowError,
    ) as e:  # fmt: skip
        raise _unreadable(file, e) from e


def _scan_zip(file: Path) -> tuple[list[str], list[str]]:
    with zipfile.ZipFile(file) as archive:
        names = archive.namelist()
        if any(n.endswith("/constants.pkl") for n in names):
            raise _NotACheckpointError(
                "is a TorchScript archive (torch.jit.save); load it with torch.jit.load"
            )
        data = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(data) != 1:
            raise _NotACheckpointError("is a zip file without the data.pkl record that torch.save writes")
        return _scan_pickles(io.BytesIO(archive.read(data[0])), count=1)


def _scan_legacy(fh: BinaryIO) -> tuple[list[str], list[str]]:
    """Legacy ``torch.save`` (magic number, protocol, system info, object, storage keys) or one raw pickle."""
    first = list(pickletools.genops(fh))
    magic = torch.serialization.MAGIC_NUMBER
    is_torch = any(op.name.startswith("LONG") and arg == magic for op, arg, _ in first)
    if not is_torch:
        fh.seek(0)
        return _scan_pickles(fh, count=1)
    return _scan_pickles(fh, count=4)


def _scan_pickles(fh: BinaryIO, count: int) -> tuple[list[str], list[str]]:
    names: dict[str, None] = {}
    constructed: dict[str, None] = {}
    for _ in range(count):
        _scan_one(fh, names, constructed)
    return list(names), list(constructed)


def _scan_one(fh: BinaryIO, names: dict[str, None], constructed: dict[str, None]) -> None:
    """Simulate one pickle's stack without building anything, recording globals and REDUCE callees.

    Marks are kept as pickle keeps them (a stack of stacks), so every opcode costs O(1): the scan is linear
    in the file however many marks it holds.
    """
    stack: list[Any] = []
    marks: list[list[Any]] = []
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(fh):
        pushed: Any = None
        if op.name in ("GLOBAL", "INST"):
            pushed = _Global(_mapped(*arg.split(" ", 1)))
        elif op.name == "STACK_GLOBAL":
            module, attr = stack[-2], stack[-1]
            pushed = _Global(_mapped(module, attr) if _plain_str(module, attr) else "<computed STACK_GLOBAL>")
        elif op.name.startswith("EXT"):
            pushed = _Global(f"<copyreg extension {arg}>")
        elif op.name in ("REDUCE", "OBJ"):  # calls: REDUCE f(args); OBJ the class just above the mark
            callee = stack[-2] if op.name == "REDUCE" else stack[0]
            if isinstance(callee, _Global):
                constructed[str(callee)] = None
        if isinstance(pushed, _Global):
            names[str(pushed)] = None
            if op.name == "INST":  # INST calls the class with the arguments above the mark
                constructed[str(pushed)] = None
        elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
            pushed = arg
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed = memo[arg]
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif op.name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        stack = _apply_stack_effect(op, stack, marks, pushed)


def _apply_stack_effect(
    op: pickletools.OpcodeInfo, stack: list[Any], marks: list[list[Any]], pushed: Any
) -> list[Any]:
    """The stack after ``op`` (a new list after MARK or an opcode that pops to the mark)."""
    before, after = op.stack_before, op.stack_after
    if op.name in ("MEMOIZE", "DUP"):  # keep the object itself on the stack (a global may be memoized)
        stack.extend(stack[-1:] if op.name == "DUP" else [])
        return stack
    if op.name == "MARK":
        if len(marks) >= MAX_MARK_DEPTH:
            raise ValueError(
                f"pickle nests more than {MAX_MARK_DEPTH:,} marks (no checkpoint's data is that deep)"
            )
        marks.append(stack)
        return []
    if pickletools.markobject in before:
        if not marks:
            raise ValueError(f"pickle mark underflow at {op.name}")
        stack, below = marks.pop(), before.index(pickletools.markobject)
    else:
        below = len(before)
    if len(stack) < below:
        raise ValueError(f"pickle stack underflow at {op.name}")
    del stack[len(stack) - below :]
    if after:
        stack.extend([None] * (len(after) - 1) + [pushed])
    return stack


def _plain_str(*values: Any) -> bool:
    return all(type(v) is str for v in values)


def _mapped(module: str, name: str) -> str:
    """Apply the Python 2 name mapping that pickle (and torch's weights-only unpickler) applies."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"
