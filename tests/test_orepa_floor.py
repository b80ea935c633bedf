"""benchmarks/orepa_floor.py runs; its GEMM floor has the gradients of the same GEMM under autograd."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "orepa_floor.py"


def _script():
    spec = importlib.util.spec_from_file_location("orepa_floor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gemm_floor_has_the_gemms_gradients() -> None:
    floor = _script()
    c2 = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    c1 = torch.randn(4, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    w0 = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    got = torch.autograd.grad((floor._Gemms.apply(c2, c1, w0) * upstream).sum(), [c2, c1, w0])
    a, b = c2.detach().reshape(-1, 4).requires_grad_(), c1.detach().reshape(4, 4).requires_grad_()
    want = torch.autograd.grad(((a @ b).view(6, 4, 3, 3) * upstream).sum(), [a, b])
    torch.testing.assert_close(got[0].reshape(-1, 4), want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1].reshape(4, 4), want[1], rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(got[2]) == 0  # written once, as zeros


def test_the_script_prints_every_case(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["orepa_floor.py", "--rounds", "1", "--batch", "1", "--threads", "1"])
    threads = torch.get_num_threads()
    try:
        _script().main()
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for case in ("plain", "OREPA", "floor-writes", "floor-gemm"):
        assert f"  {case} " in out
