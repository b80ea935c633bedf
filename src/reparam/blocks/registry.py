"""Block registry: one line registers a block for name lookup (YAML names, CLI, factories).

``signature`` records the constructor convention that model builders (e.g. Ultralytics YAML parsing)
need: ``"conv"`` for ``(c1, c2, *args)``, ``"repeat"`` for ``(c1, c2, n, *args)``, ``"custom"`` for
blocks whose channels the integration handles itself. ``build`` is what a name constructs (default: the
class); a family whose one YAML name covers several classes registers a factory (OREPA -> create_orepa).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from torch import nn

__all__ = ["BlockSpec", "create_block", "get_block", "register_block", "registered_blocks"]

Signature = Literal["conv", "repeat", "custom"]
_SIGNATURES = ("conv", "repeat", "custom")
M = TypeVar("M", bound=type[nn.Module])


@dataclass(frozen=True)
class BlockSpec:
    """A registered block: its public name, class, constructor convention and builder.

    ``build(*args, **kwargs)`` constructs the block from the registered name's arguments; it defaults to
    ``cls`` and may return a sibling class (the OREPA factory returns OREPA_1x1 for k = 1).
    """

    name: str
    cls: type[nn.Module]
    signature: Signature
    build: Callable[..., nn.Module] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.build is None:
            object.__setattr__(self, "build", self.cls)


_REGISTRY: dict[str, BlockSpec] = {}


def register_block(
    signature: Signature = "conv", name: str | None = None, build: Callable[..., nn.Module] | None = None
) -> Callable[[M], M]:
    """Class decorator adding a block to the registry under ``name`` (default: the class name).

    ``build`` (default: the class) is what :func:`create_block` and model builders call for that name.
    """
    if signature not in _SIGNATURES:
        raise ValueError(f"signature must be one of {_SIGNATURES}, got {signature!r}")
    if build is not None and not callable(build):
        raise ValueError(f"build must be callable, got {build!r}")

    def deco(cls: M) -> M:
        key = name or cls.__name__
        if key in _REGISTRY and _REGISTRY[key].cls is not cls:
            raise ValueError(f"block name {key!r} is already registered to {_REGISTRY[key].cls.__module__}")
        _REGISTRY[key] = BlockSpec(key, cls, signature, build)
        return cls

    return deco


def _spec(name: str) -> BlockSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown block {name!r}; registered blocks: {', '.join(sorted(_REGISTRY))}"
        ) from None


def get_block(name: str) -> type[nn.Module]:
    """The block class registered as ``name``; ValueError listing the known names otherwise."""
    return _spec(name).cls


def create_block(name: str, *args: object, **kwargs: object) -> nn.Module:
    """Build the block registered as ``name`` through its ``build``: ``create_block("OREPA", 8, 8, 1)``."""
    return _spec(name).build(*args, **kwargs)


def registered_blocks() -> dict[str, BlockSpec]:
    """A copy of the registry, name -> spec."""
    return dict(_REGISTRY)
