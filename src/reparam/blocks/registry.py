"""Block registry: one line registers a block for name lookup (YAML names, CLI, factories).

``signature`` records the constructor convention that model builders (e.g. Ultralytics YAML parsing)
need: ``"conv"`` for ``(c1, c2, *args)``, ``"repeat"`` for ``(c1, c2, n, *args)``, ``"custom"`` for
blocks whose channels the integration handles itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from torch import nn

__all__ = ["BlockSpec", "block_names", "get_block", "register_block", "registered_blocks"]

Signature = Literal["conv", "repeat", "custom"]
_SIGNATURES = ("conv", "repeat", "custom")
M = TypeVar("M", bound=type[nn.Module])


@dataclass(frozen=True)
class BlockSpec:
    """A registered block: its public name, class and constructor convention."""

    name: str
    cls: type[nn.Module]
    signature: Signature


_REGISTRY: dict[str, BlockSpec] = {}


def register_block(signature: Signature = "conv", name: str | None = None) -> Callable[[M], M]:
    """Class decorator adding a block to the registry under ``name`` (default: the class name)."""
    if signature not in _SIGNATURES:
        raise ValueError(f"signature must be one of {_SIGNATURES}, got {signature!r}")

    def deco(cls: M) -> M:
        key = name or cls.__name__
        if key in _REGISTRY and _REGISTRY[key].cls is not cls:
            raise ValueError(f"block name {key!r} is already registered to {_REGISTRY[key].cls.__module__}")
        _REGISTRY[key] = BlockSpec(key, cls, signature)
        return cls

    return deco


def get_block(name: str) -> type[nn.Module]:
    """The block class registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name].cls
    except KeyError:
        raise ValueError(
            f"unknown block {name!r}; registered blocks: {', '.join(sorted(_REGISTRY))}"
        ) from None


def registered_blocks() -> dict[str, BlockSpec]:
    """A copy of the registry, name -> spec."""
    return dict(_REGISTRY)


def block_names() -> list[str]:
    """Sorted names of all registered blocks."""
    return sorted(_REGISTRY)
