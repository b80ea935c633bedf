"""The one activation resolver of every block, and the model-wide default activation.

Blocks take ``act`` as Ultralytics ``Conv`` does (True -> the default activation, False/None -> none,
a module -> itself) and also the forms users write in YAML rows and configs: names such as ``"relu"``
and constructor strings such as ``"nn.ReLU()"`` or ``"torch.nn.LeakyReLU(0.1)"``. ``act=True`` means
"the model's default activation": SiLU, or what ``use_default_act`` sets while a model is built (the
Ultralytics adapter wraps YAML model building in it, so the YAML ``activation:`` key reaches every block).
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import nn
from torch.nn.modules import activation as _activation

__all__ = ["Act", "activation_classes", "default_act", "resolve_act", "use_default_act"]

Act = bool | str | nn.Module | None
"""What a block's ``act`` argument accepts (see :func:`resolve_act`)."""

ACCEPTED = (
    "True (the default activation), False/None (no activation), an nn.Module instance, "
    "an activation name such as 'relu', 'silu', 'relu6', 'hardswish', 'leakyrelu', 'gelu', 'sigmoid', "
    "'identity'/'none' (any case), or a constructor string such as 'nn.ReLU()', 'torch.nn.SiLU()' "
    "or 'nn.LeakyReLU(0.1)' (literal arguments only)"
)

_DEFAULT: ContextVar[nn.Module | None] = ContextVar("reparam_default_act", default=None)


def activation_classes() -> dict[str, type[nn.Module]]:
    """Lower-case class name -> class, for every module class in ``torch.nn.modules.activation``."""
    classes = {
        name.lower(): cls
        for name, cls in vars(_activation).items()
        if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == _activation.__name__
    }
    classes["identity"] = nn.Identity
    return classes


def _bad(act: object, why: str = "") -> ValueError:
    return ValueError(f"act={act!r} is not an activation{why}; act accepts {ACCEPTED}")


def _literal(node: ast.expr, act: str) -> object:
    """The value of a constant argument of a constructor string (numbers, bools, strings, None)."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise _bad(act, f" (argument {ast.unparse(node)!r} is not a literal)") from None


def _from_constructor(act: str) -> nn.Module | None:
    """``[torch.]nn.<Name>(literals...)`` -> a new module; None if ``act`` does not have that form."""
    try:
        call = ast.parse(act.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(call, ast.Call):
        return None
    dotted, func = [], call.func
    while isinstance(func, ast.Attribute):
        dotted.insert(0, func.attr)
        func = func.value
    if (
        not dotted
        or not isinstance(func, ast.Name)
        or [func.id, *dotted[:-1]] not in (["nn"], ["torch", "nn"])
    ):
        return None
    cls = activation_classes().get(dotted[-1].lower())
    if cls is None:
        raise _bad(act, f" ({dotted[-1]} is not in torch.nn's activations)")
    args = [_literal(a, act) for a in call.args]
    kwargs = {k.arg: _literal(k.value, act) for k in call.keywords if k.arg is not None}
    if len(kwargs) != len(call.keywords):
        raise _bad(act, " (**kwargs are not accepted)")
    try:
        return cls(*args, **kwargs)
    except TypeError as e:
        raise _bad(act, f" ({cls.__name__} cannot be built from these arguments: {e})") from None


def resolve_act(act: Act) -> nn.Module:
    """The activation module for a block's ``act`` argument; ValueError naming ``act`` otherwise.

    A module instance is returned as is (blocks given the same instance share it, as in Ultralytics);
    every other form builds a new module.
    """
    if act is True:
        return default_act()
    if act is False or act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, str):
        name = act.strip().lower()
        if name == "none":
            return nn.Identity()
        cls = activation_classes().get(name)
        if cls is not None:
            try:
                return cls()
            except TypeError:
                raise _bad(
                    act, f" ({cls.__name__} needs arguments: write 'nn.{cls.__name__}(...)')"
                ) from None
        module = _from_constructor(act)
        if module is not None:
            return module
    raise _bad(act)


def default_act() -> nn.Module:
    """A new instance of the current default activation: SiLU unless ``use_default_act`` set another.

    Each call returns its own copy (``copy.deepcopy`` of the template), so no two blocks share an
    activation module even when it holds parameters (``nn.PReLU``).
    """
    template = _DEFAULT.get()
    return nn.SiLU() if template is None else copy.deepcopy(template)


@contextmanager
def use_default_act(act: Act) -> Iterator[nn.Module]:
    """Within the ``with`` block, ``act=True`` of every block means ``act`` (anything ``resolve_act`` takes).

    Yields the template module; nesting works and the previous default comes back on exit, also on error.
    """
    template = resolve_act(act)
    token = _DEFAULT.set(template)
    try:
        yield template
    finally:
        _DEFAULT.reset(token)
