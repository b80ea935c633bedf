"""glibc's malloc told to keep freed memory for reuse: the training commands' CPU steps get cheaper.

Why: by default glibc serves large blocks with fresh ``mmap`` pages and gives freed memory at the heap's top
back to the OS, so every training step page-faults its activations and temporaries in again. With a fixed
32 MiB mmap threshold and no trimming, ``reparam demo``'s training stage took 47 s instead of 53 s at 6
epochs and 246 s instead of 256 s at 30 (2 cores), and a conv8 step of ``benchmarks/train_cost.py`` ~20 %
less CPU time, plain and OREPA alike. The cost: the process's resident memory does not shrink after its
peak. Only ``train`` and ``demo`` call this; ``study`` does not, because it measures each variant's peak
training memory and kept free memory would count in it. Importing reparam changes nothing.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["MMAP_THRESHOLD", "keep_freed_memory"]

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks below this come from the heap (glibc's largest allowed threshold on 64-bit Linux)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters of glibc's <malloc.h>
_NO_TRIM = 2**31 - 1  # the largest value mallopt's int argument takes (2 GiB of free heap top)
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def _glibc() -> str | None:
    """glibc's version string (``"glibc 2.36"``), or None on another C library or OS."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):  # name unknown (not glibc) / confstr missing (Windows)
        return None


def keep_freed_memory() -> str:
    """Set glibc's mmap threshold to 32 MiB and turn trimming off for this process; says what it did.

    Left alone (and said so): another C library, or malloc settings of the user's own
    (``GLIBC_TUNABLES`` with a ``glibc.malloc`` key, or a ``MALLOC_*_`` variable).
    """
    version = _glibc()
    if version is None:
        return "memory: not glibc, malloc left as it is"
    own = [k for k in _USER_SETTINGS if k in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        own.append("GLIBC_TUNABLES")
    if own:
        return f"memory: malloc left as your {', '.join(own)} set it"
    libc = ctypes.CDLL(None)
    settings = {
        "M_MMAP_THRESHOLD": (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, _NO_TRIM),
    }
    refused = [name for name, (param, value) in settings.items() if libc.mallopt(param, value) != 1]
    if refused:
        applied = [name for name in settings if name not in refused]
        rest = f"applied {', '.join(applied)}" if applied else "malloc left as it is"
        return f"memory: {version} refused mallopt {', '.join(refused)}; {rest}"
    return (
        f"memory: {version} malloc keeps freed memory for reuse (mmap threshold 32 MiB, no trimming): "
        "faster CPU steps; resident memory does not shrink after its peak"
    )
