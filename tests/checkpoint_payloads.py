"""Pickle payloads for the safe-loading tests: objects that run code when unpickled, and a harmless class
that is on no allow-list. Importable by name so that pickle can reference them."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any


class SystemPayload:
    """Unpickles as ``os.system("touch <marker>")`` (global ``posix.system`` on Linux)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


class TouchPayload:
    """Unpickles as ``pathlib.Path(marker).touch()`` (globals ``pathlib.Path`` and ``builtins.getattr``)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class ConstructorPayload:
    """Unpickles as ``cls(*args)``: a constructor call, which a saved module never needs."""

    def __init__(self, cls: type, *args: Any) -> None:
        self.cls, self.args = cls, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.cls, self.args)


@dataclasses.dataclass
class Harmless:
    """A plain data class: safe, but on no allow-list."""

    name: str
    value: int
