"""The host SIMT layer's own tests (csrc/emu/selftest.cpp), and proof that they can fail.

Built normally, every self-test must pass. Built with ``-DLMINI_EMU_BROKEN_SYNCTHREADS``
(``__syncthreads`` made a no-op), every test that depends on a barrier must fail: if the
layer's barrier were fake, or the tests unable to see a missing one, this would catch it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CUDA_INCLUDE = Path("/usr/local/cuda/include")
BARRIER_TESTS = {"block_reduction", "transpose", "histogram", "dynamic_shared"}
ALL_TESTS = BARRIER_TESTS | {"shuffles"}


def _build_and_run(tmp_path: Path, *defines: str) -> dict[str, bool]:
    gxx = shutil.which("g++")
    assert gxx, "g++ is required to build the SIMT self-tests"
    assert (CUDA_INCLUDE / "cuda_fp16.h").exists(), f"CUDA headers not found in {CUDA_INCLUDE}"
    exe = tmp_path / "selftest"
    cmd = [
        gxx,
        "-std=c++20",
        "-O2",
        "-pthread",
        "-DLMINI_EMU",
        *defines,
        f"-I{ROOT / 'csrc' / 'include'}",
        f"-I{ROOT / 'csrc'}",
        f"-I{CUDA_INCLUDE}",
        str(ROOT / "csrc" / "emu" / "selftest.cpp"),
        "-o",
        str(exe),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    results = {}
    for line in out.stdout.splitlines():
        status, name = line.split()
        results[name] = status == "PASS"
    assert set(results) == ALL_TESTS, f"unexpected self-test output:\n{out.stdout}\n{out.stderr}"
    assert (out.returncode == 0) == all(results.values())
    return results


def test_selftests_pass(tmp_path):
    results = _build_and_run(tmp_path)
    assert all(results.values()), f"SIMT self-tests failed: {results}"


@pytest.mark.parametrize("attempt", range(2))
def test_selftests_fail_without_barrier(tmp_path, attempt):
    results = _build_and_run(tmp_path, "-DLMINI_EMU_BROKEN_SYNCTHREADS")
    caught = {name for name in BARRIER_TESTS if not results[name]}
    assert caught == BARRIER_TESTS, f"with __syncthreads removed these still passed: {BARRIER_TESTS - caught}"
    assert results["shuffles"], "the shuffle test does not use __syncthreads and must still pass"
