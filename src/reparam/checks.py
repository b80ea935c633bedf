"""Strict bool switches: a public ``bool`` parameter accepts ``True`` or ``False`` only.

Why: a truthy stand-in such as ``trust="False"`` or ``overwrite="no"`` would otherwise unpickle a file or
replace one. :func:`strict_bools` is the one mechanism: it reads the decorated function's signature and,
on every call and before any work, checks each parameter annotated ``bool`` (``bool | None`` also takes
None). Adding a public function with a bool switch costs one line::

    @strict_bools
    def export(model: str, *, int8: bool = False, overwrite: bool = False) -> Path: ...

A class is decorated the same way (its ``__init__`` is checked). ``tests/test_strict_bools.py`` walks every
public function and class of reparam and fails on a bool parameter that is not checked. The CLI parses
``trust=False`` text into a bool before calling (:func:`reparam.options.boolean`).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from reparam.text import shorten

__all__ = ["SwitchError", "bool_parameters", "check_bool", "strict_bools"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__strict_bools__"


class SwitchError(TypeError, ValueError):
    """A bool switch got something other than True/False: a TypeError (wrong type), and a ValueError as
    reparam's bad-input errors were before, so callers catching either keep working."""


def _shown(value: object) -> str:
    return f"{type(value).__name__} {shorten(repr(value), 63)}"


def check_bool(name: str, value: object, *, optional: bool = False) -> None:
    """Raise :class:`SwitchError` naming ``name`` unless ``value`` is True or False (or None if optional)."""
    _require("optional", optional, optional=False)
    _require(name, value, optional=optional)


def _require(name: str, value: object, *, optional: bool) -> None:
    if isinstance(value, bool) or (optional and value is None):
        return
    allowed = "True, False or None" if optional else "True or False"
    raise SwitchError(f"{name} must be {allowed}, got {_shown(value)}")


def _kind(annotation: object) -> str | None:
    """'bool' for a ``bool`` annotation, 'optional' for ``bool | None``, else None (strings resolved)."""
    if annotation is bool:
        return "bool"
    if isinstance(annotation, str):
        text = annotation.replace(" ", "")
        return {"bool": "bool", "bool|None": "optional", "None|bool": "optional"}.get(text)
    args = set(typing.get_args(annotation))
    return "optional" if args == {bool, type(None)} else None


def bool_parameters(fn: Callable[..., Any]) -> dict[str, str]:
    """Name -> 'bool' or 'optional' for every parameter of ``fn`` annotated ``bool`` (or ``bool | None``)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    found = {}
    for p in inspect.signature(target).parameters.values():
        kind = _kind(p.annotation)
        if kind is not None and p.kind is not p.VAR_KEYWORD:
            found[p.name] = kind
    return found


def _checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    names = bool_parameters(fn)
    if not names:
        raise TypeError(f"strict_bools: {fn.__qualname__} has no parameter annotated bool")
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return fn(*args, **kwargs)  # let Python name the wrong call
        for name, kind in names.items():
            if name in bound:
                _require(name, bound[name], optional=kind == "optional")
        return fn(*args, **kwargs)

    setattr(wrapper, _MARK, tuple(names))  # what the walker test looks for
    return wrapper


def strict_bools(fn: F) -> F:
    """Decorator: every call checks the parameters annotated ``bool`` first (see the module docstring)."""
    if inspect.isclass(fn):
        fn.__init__ = _checked(fn.__init__)  # type: ignore[misc]
        setattr(fn, _MARK, getattr(fn.__init__, _MARK))
        return fn
    return _checked(fn)  # type: ignore[return-value]
