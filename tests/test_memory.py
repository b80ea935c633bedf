"""The training commands' malloc setting: glibc serves an 8 MiB block from the heap afterwards, not mmap."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reparam.app import memory

GLIBC = memory._glibc() is not None

# A fresh interpreter: optionally keep_freed_memory(), then malloc 8 MiB and report whether glibc's count of
# mmapped blocks (mallinfo2().hblks, an independent reading of where the block came from) went up.
PROBE = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("memory", sys.argv[2])  # the module alone, without torch
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
class Info(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "on":
    print(module.keep_freed_memory())
before = libc.mallinfo2().hblks
block = libc.malloc(8 * 1024 * 1024)
print("mmapped" if libc.mallinfo2().hblks > before else "heap")
libc.free(ctypes.c_void_p(block))
"""


def _probe(mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, mode, memory.__file__],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stdout.splitlines()


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_after_the_setting_a_large_block_comes_from_the_heap() -> None:
    assert _probe("off") == ["mmapped"]  # glibc's default: blocks over 128 KiB are fresh mmap pages
    said, where = _probe("on")
    assert where == "heap"
    assert said.startswith("memory: glibc ") and "mmap threshold 32 MiB, no trimming" in said


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
    ],
)
def test_the_users_own_malloc_settings_are_kept(env: dict[str, str], named: str) -> None:
    said, where = _probe("on", **env)
    assert said == f"memory: malloc left as your {named} set it"
    assert where == "mmapped"


def test_another_c_library_is_left_alone_and_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.keep_freed_memory() == "memory: not glibc, malloc left as it is"


def test_a_refused_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            return 1 if param == -3 else 0  # M_MMAP_THRESHOLD taken, M_TRIM_THRESHOLD refused

    monkeypatch.setattr(memory, "_glibc", lambda: "glibc 2.99")
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda _: Libc())
    for key in [*memory._USER_SETTINGS, "GLIBC_TUNABLES"]:
        monkeypatch.delenv(key, raising=False)
    said = memory.keep_freed_memory()
    assert said == "memory: glibc 2.99 refused mallopt M_TRIM_THRESHOLD; applied M_MMAP_THRESHOLD"
