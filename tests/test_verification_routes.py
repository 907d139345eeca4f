"""The verification routes behave as the real GPU routes would, or refuse: the Triton
interpreter and the host SIMT emulator under threads, and a TRITON_INTERPRET changed after the
Triton kernels were imported."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from utils import assert_close

import lmini_kernels as lk

ROOT = Path(__file__).resolve().parents[1]
GPU = os.environ.get("LMINI_TEST_GPU", "0") == "1"


def _calls(backend: str):
    """Independent calls of every op on ``backend`` with their own inputs: (fn, args) pairs."""
    gen = torch.Generator().manual_seed(1234)

    def r(*shape):
        return torch.randn(*shape, generator=gen)

    calls = []
    for i in range(3):
        calls.append((lambda x: lk.row_softmax(x, scale=0.7, backend=backend), (r(5 + i, 37),)))
        q, k, v = r(2, 5, 4, 64), r(2, 9 + i, 2, 64), r(2, 9 + i, 2, 64)
        mask = torch.zeros(2, 9 + i, dtype=torch.bool)
        mask[1, :2] = True
        calls.append(
            (lambda q, k, v, m: lk.prefusion_attention(q, k, v, key_padding_mask=m, backend=backend), (q, k, v, mask))
        )
    return calls


@pytest.mark.skipif(GPU, reason="the verification routes exist only without LMINI_TEST_GPU")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_routes_are_thread_safe(backend: str) -> None:
    """Many threads at once give the answers of one thread (interpreter launches are serialised
    by lmini; the emulator's launches by its own mutex)."""
    calls = _calls(backend) * 3
    serial = [fn(*args) for fn, args in calls]
    with ThreadPoolExecutor(6) as pool:
        threaded = list(pool.map(lambda c: c[0](*c[1]), calls))
    for want, got in zip(serial, threaded, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for (_, args), got in zip(calls, serial, strict=True):  # and they are right
        assert_close(got, _reference(args), dtype=torch.float32)


def _reference(args):
    if len(args) == 1:
        return lk.row_softmax(args[0].double(), scale=0.7, backend="reference")
    q, k, v, m = args
    return lk.prefusion_attention(q.double(), k.double(), v.double(), key_padding_mask=m, backend="reference")


def test_triton_interpret_set_after_import_is_refused() -> None:
    """Triton fixes a kernel's mode when it is decorated: setting TRITON_INTERPRET after the
    kernels were imported gives one named error, not Triton's '0 active drivers'."""
    script = (
        "import os, torch, lmini_kernels as lk\n"
        "import lmini_kernels.ops.row_softmax.triton\n"  # decorated without the interpreter
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "try:\n"
        "    lk.row_softmax(torch.randn(2, 3), backend='triton')\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "LMINI_CUDA_EMULATE")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERR TRITON_INTERPRET is set now but was unset" in out.stdout
    assert "before the first Triton call" in out.stdout and "active drivers" not in out.stdout + out.stderr
