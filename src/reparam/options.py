"""``key=value`` option parsing for the ``reparam`` command: value parsers, the Key/Command tables' types,
argparse with one-line errors, and :func:`parse_options`.

Kept apart from :mod:`reparam.cli` (which lists the commands and runs them) so the CLI module stays a table.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from reparam.checks import strict_bools
from reparam.io import path_problem
from reparam.text import shorten

__all__ = [
    "FALSE",
    "TRUE",
    "Command",
    "Key",
    "boolean",
    "build_parser",
    "choice",
    "int_at_least",
    "name_or_path",
    "names",
    "number_in",
    "optional",
    "parse_options",
    "path",
    "rates",
    "seeds",
    "text",
]

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
Parser = Callable[[str], Any]


def int_at_least(minimum: int) -> Parser:
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise ValueError(f"must be an integer >= {minimum}") from None
        if n < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        return n

    return parse


@strict_bools
def number_in(lo: float, hi: float, lo_open: bool = True) -> Parser:
    def parse(v: str) -> float:
        try:
            x = float(v)
        except ValueError:
            raise ValueError("must be a number") from None
        if not ((x > lo if lo_open else x >= lo) and x <= hi):
            raise ValueError(f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}]")
        return x

    return parse


def boolean(v: str) -> bool:
    if v.lower() in TRUE:
        return True
    if v.lower() in FALSE:
        return False
    raise ValueError("must be True or False")


def text(v: str) -> str:
    if not v:
        raise ValueError("must not be empty")
    return v


def choice(*options: str) -> Parser:
    def parse(v: str) -> str:
        if v.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return v.lower()

    return parse


def names(v: str) -> list[str]:
    items = [s.strip() for s in v.split(",") if s.strip()]
    if not items:
        raise ValueError("must be a comma-separated list of model names")
    return items


def _distinct(v: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> list[Any]:
    """A comma-separated list of distinct values, each converted and passing ``ok``."""
    try:
        items = [convert(s) for s in v.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"must be a comma-separated list of {what}") from None
    if not items or not all(map(ok, items)) or len(set(items)) != len(items):
        raise ValueError(f"must be a comma-separated list of distinct {what}")
    return items


def seeds(v: str) -> list[int]:
    return _distinct(v, int, lambda s: s >= 0, "integers >= 0")


def rates(v: str) -> list[float]:
    return _distinct(v, float, lambda r: math.isfinite(r) and r > 0, "learning rates > 0")


def name_or_path(v: str) -> str:
    """A name or a path (model, data, calib); one the OS cannot take as a path (too long) is refused."""
    problem = path_problem(v)
    if problem is not None:
        raise ValueError(problem)
    return v


def path(v: str) -> Path:
    """A file or folder argument; a path the OS cannot take (too long) is refused before any work."""
    return Path(name_or_path(v))


def optional(parse: Parser) -> Parser:
    def wrapped(v: str) -> Any:
        return None if v.lower() == "none" else parse(v)

    return wrapped


@dataclass(frozen=True)
class Key:
    """One ``key=value`` option: its parser, default (None: optional or required) and help line."""

    name: str
    parse: Parser
    default: Any
    help: str


@dataclass(frozen=True)
class Command:
    """A subcommand: its keys, which keys bare words fill in order, which keys must be given."""

    name: str
    help: str
    run: Callable[[dict[str, Any]], int]
    keys: tuple[Key, ...]
    positional: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    extra_keys: Callable[[], dict[str, Any]] | None = None
    extra_help: str = ""


def _epilog(cmd: Command) -> str:
    width = max(len(k.name) for k in cmd.keys) + 1
    lines = ["keys (key=value):"]
    for k in cmd.keys:
        if k.name in cmd.required:
            default = "required"
        elif k.default is None:
            default = "optional"
        else:
            shown = ",".join(map(str, k.default)) if isinstance(k.default, list) else k.default
            default = f"default {shown}"
        lines.append(f"  {k.name + '=':<{width}} {k.help} ({default})")
    if cmd.extra_help:
        lines.append(cmd.extra_help)
    return "\n".join(lines)


class _OneLineErrors(argparse.ArgumentParser):
    """argparse with the CLI contract for bad input: ONE stderr line naming the problem, exit code 2."""

    def error(self, message: str) -> NoReturn:
        hint = "" if "--help" in message else f" (see {self.prog} --help)"
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def build_parser(
    commands: Mapping[str, Command],
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (``--version``, ``--debug``) and one sub-parser per command, keyed by name."""
    from importlib.metadata import version

    top = _OneLineErrors(
        prog="reparam",
        description="Structural re-parameterization for PyTorch and Ultralytics YOLO. "
        "Arguments are key=value pairs; `reparam <command> --help` lists them.",
    )
    top.add_argument("--version", action="version", version=f"reparam {version('reparam')}")
    top.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (also: REPARAM_DEBUG=1)"
    )
    subs = top.add_subparsers(dest="command", metavar="command")
    parsers = {}
    for cmd in commands.values():
        usage = " ".join([*cmd.positional, "[key=value ...]"])
        sub = subs.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.help,
            epilog=_epilog(cmd),
            usage=f"reparam {cmd.name} {usage}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("args", nargs="*", help=argparse.SUPPRESS)
        parsers[cmd.name] = sub
    return top, parsers


def parse_options(cmd: Command, tokens: Sequence[str]) -> dict[str, Any]:
    """Turn ``key=value`` tokens (and bare words for positional keys) into typed options.

    Raises ValueError naming the offending key or value.
    """
    keys = {k.name: k for k in cmd.keys}
    extra = cmd.extra_keys() if cmd.extra_keys else {}
    given: dict[str, Any] = {}
    free = list(cmd.positional)
    for tok in tokens:
        if "=" in tok:
            name, value = tok.split("=", 1)
        elif free:
            name, value = free[0], tok
        else:
            raise ValueError(f"unexpected argument {tok!r}: arguments are key=value pairs")
        if name in given:
            raise ValueError(f"key {name!r} is given twice")
        if name in keys:
            try:
                given[name] = keys[name].parse(value)
            except ValueError as e:
                raise ValueError(f"bad value for {name}={shorten(repr(value), 80)}: {e}") from None
        elif name in extra:
            from ultralytics.cfg import smart_value

            given[name] = smart_value(value)
        else:
            raise ValueError(f"unknown key {name!r} for 'reparam {cmd.name}'; valid keys: {', '.join(keys)}")
        if name in free:
            free.remove(name)
    missing = [k for k in cmd.required if k not in given]
    if missing:
        raise ValueError(f"missing required key {missing[0]}= (see reparam {cmd.name} --help)")
    if extra:
        from ultralytics.cfg import check_cfg

        passed = {k: v for k, v in given.items() if k in extra and k not in keys}
        try:
            check_cfg(passed)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad value: {e}") from None
    return {k.name: k.default for k in cmd.keys if k.name not in given} | given
