"""The conversion protocol shared by every convertible module, and constructor helpers.

The protocol: a ``deployed`` property (is this module converted?) and an idempotent, in-place
``reparameterize()``. A multi-branch block subclasses :class:`ReparamBlock`, builds its training
branches, and implements ``equivalent_kernel_bias()`` (differentiable) and ``forward_train()``;
``reparameterize()`` then replaces all branches with one ``nn.Conv2d(bias=True)`` named ``conv``.
A module that only holds such blocks subclasses :class:`ReparamContainer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from reparam.checks import strict_bools

__all__ = [
    "ReparamBlock",
    "ReparamContainer",
    "answers_protocol",
    "autopad",
    "check_centred_geometry",
    "check_divisible",
    "check_odd_kernel",
    "check_positive",
    "is_pending",
    "outermost_modules",
]


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """'Same' padding for an odd kernel ``k`` with dilation ``d`` when ``p`` is None."""
    return d * (k // 2) if p is None else p


def answers_protocol(module: nn.Module) -> bool:
    """True if ``module`` answers the conversion protocol: a ``deployed`` flag and ``reparameterize()``."""
    return hasattr(module, "deployed") and callable(getattr(module, "reparameterize", None))


def is_pending(module: nn.Module) -> bool:
    """True for a module of the conversion protocol that is not converted yet."""
    return answers_protocol(module) and not module.deployed


def outermost_modules(
    module: nn.Module, keep: Callable[[nn.Module], bool] = answers_protocol, prefix: str = ""
) -> Iterator[tuple[str, nn.Module]]:
    """``(name, m)`` for the modules ``keep`` accepts that are not inside another accepted one.

    ``module`` itself is included (named ``prefix``, '' for the root); names are qualified like
    ``named_modules()``. The one walker for "the outermost modules that answer the protocol".
    """
    if keep(module):
        yield prefix, module
        return
    for name, child in module.named_children():
        yield from outermost_modules(child, keep, f"{prefix}.{name}" if prefix else name)


def _type_hint(v: object) -> str:
    return f"{type(v).__name__} {v!r}"


def check_positive(**values: int) -> None:
    """Raise ValueError naming the first argument that is not a positive int (and the type it got)."""
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {_type_hint(v)}")


def check_divisible(g: int, **channels: int) -> None:
    """Raise ValueError unless every named channel count is divisible by the group count ``g``."""
    for name, c in channels.items():
        if c % g:
            raise ValueError(f"{name}={c} must be divisible by groups g={g}")


def check_odd_kernel(k: int) -> None:
    """Raise ValueError for an even kernel: branches are centred, which needs a centre tap."""
    if k % 2 == 0:
        raise ValueError(f"kernel size k={k} must be odd so that smaller branches can be centred")


@strict_bools
def check_centred_geometry(
    c1: int, c2: int, k: int, s: int, p: int | None, g: int, d: int, family: str, dilation: bool = True
) -> int:
    """Validate a 'smaller branches centred in a kxk kernel' geometry and return the resolved padding.

    ``dilation=False`` for families whose extra branches (pools, 1x1 chains) have no dilated form.
    """
    check_positive(c1=c1, c2=c2, k=k, s=s, g=g, d=d)
    if not dilation and d != 1:
        raise ValueError(f"dilation d={d} is not supported: {family}'s branches are undilated (use d=1)")
    check_odd_kernel(k)
    check_divisible(g, c1=c1, c2=c2)
    p = autopad(k, p, d)
    if p != d * (k // 2):
        need = f"d*(k//2)={d * (k // 2)}" if dilation else f"k//2={k // 2}"
        raise ValueError(f"padding p={p} must equal {need}: {family}'s branches are centred in the kxk")
    return p


class ReparamBlock(nn.Module):
    """A multi-branch block that trains as several branches and deploys as one conv plus activation.

    Subclasses set ``c1, c2, k, s, p, g, d`` and ``act`` and implement ``forward_train`` and
    ``equivalent_kernel_bias``. After ``reparameterize()`` the module holds only ``conv`` and ``act``.
    """

    conv: nn.Conv2d | None

    def __init__(self, c1: int, c2: int, k: int, s: int, p: int, g: int, d: int, act: nn.Module) -> None:
        super().__init__()
        self.c1, self.c2, self.k, self.s, self.p, self.g, self.d = c1, c2, k, s, p, g, d
        self.act = act
        self.conv = None

    @property
    def deployed(self) -> bool:
        """True once the branches have been replaced by the single deploy conv."""
        return self.conv is not None

    def forward_train(self, x: Tensor) -> Tensor:
        """Forward through the training branches, before the activation."""
        raise NotImplementedError

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """Kernel ``(c2, c1/g, k, k)`` and bias ``(c2,)`` of the single conv equal to the branches."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None:
            return self.act(self.conv(x))
        return self.act(self.forward_train(x))

    def branch_names(self) -> list[str]:
        """Names of the child modules, parameters and buffers that exist only in the training form."""
        names = [n for n, _ in self.named_children() if n not in ("act", "conv")]
        names += [n for n, _ in self.named_parameters(recurse=False)]
        names += [n for n, _ in self.named_buffers(recurse=False)]
        return names

    def make_deploy_conv(self, weight: Tensor, bias: Tensor) -> nn.Conv2d:
        """The plain ``nn.Conv2d(bias=True)`` of this block's geometry holding ``weight`` and ``bias``.

        The conv takes the block's parameter dtype (``weight``/``bias`` are folded in fp32 or wider and
        rounded once here); a value that is finite in fp32 but overflows that dtype raises ValueError.
        """
        ref = next(self.parameters(), None)
        dtype = ref.dtype if ref is not None else weight.dtype
        device = ref.device if ref is not None else weight.device
        conv = nn.Conv2d(
            self.c1, self.c2, self.k, self.s, self.p, dilation=self.d, groups=self.g, bias=True
        ).to(device=device, dtype=dtype)
        conv.train(self.training)
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
        for name, folded, stored in (("kernel", weight, conv.weight), ("bias", bias, conv.bias)):
            if bool(torch.isfinite(folded).all()) and not bool(torch.isfinite(stored).all()):
                big = float(folded.abs().max())
                raise ValueError(
                    f"{type(self).__name__}: the folded {name} (max |value| {big:.3g}) overflows {dtype}; "
                    "convert the model in float32 (or check the BN running_var for near-zero entries)"
                )
        return conv

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the training branches with one conv, in place; calling it again does nothing."""
        if self.conv is not None:
            return
        weight, bias = self.equivalent_kernel_bias()
        conv = self.make_deploy_conv(weight, bias)
        for name in self.branch_names():
            delattr(self, name)
        self.conv = conv

    def extra_repr(self) -> str:
        form = "deploy" if self.deployed else "train"
        return (
            f"c1={self.c1}, c2={self.c2}, k={self.k}, s={self.s}, p={self.p}, g={self.g}, d={self.d}, "
            f"form={form}"
        )


class ReparamContainer(nn.Module):
    """A module whose own computation needs no conversion but which holds blocks that do (RepBlock, ...).

    ``reparameterize()`` converts every outermost descendant that answers the protocol; ``deployed`` is
    True when all of them are converted, so a container with nothing to convert (Transpose) is always
    deployed. Descendants that do not answer the protocol (a foreign Conv+BN) are left to
    ``reparam.reparameterize``, which also folds plain Conv2d -> BatchNorm2d pairs.
    """

    def _inner_blocks(self) -> list[nn.Module]:
        """The outermost descendants that answer the protocol (each converts its own subtree)."""
        return [m for child in self.children() for _, m in outermost_modules(child)]

    @property
    def deployed(self) -> bool:
        """True once every convertible block inside is converted."""
        return all(m.deployed for m in self._inner_blocks())

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Convert every block inside, in place; calling it again does nothing."""
        for m in self._inner_blocks():
            m.reparameterize()
