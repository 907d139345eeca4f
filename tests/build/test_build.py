"""setup.py's CUDA toolkit discovery and the recorded build."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setup_module():
    spec = importlib.util.spec_from_file_location("lmini_setup", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines functions only; main() runs under __main__
    return mod


def _fake_toolkit(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "bin" / "nvcc").write_text("#!/bin/sh\necho 'Cuda compilation tools, release 42.1'\n")
    (root / "bin" / "nvcc").chmod(0o755)
    (root / "include" / "cuda_runtime.h").write_text("")
    return root


def test_find_cuda_home_follows_a_wrapper_script(tmp_path, monkeypatch):
    setup = _setup_module()
    toolkit = _fake_toolkit(tmp_path / "opt" / "cuda-42.1")
    wrapper_dir = tmp_path / "usr-local-bin"
    wrapper_dir.mkdir()
    (wrapper_dir / "nvcc").write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    (wrapper_dir / "nvcc").chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}")
    # the wrapper's parent (usr-local-bin/..) has no include/cuda_runtime.h: torch's guess fails there
    found = setup.find_cuda_home()
    assert found == toolkit
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert setup.find_cuda_home() == toolkit
    assert setup.nvcc_version(toolkit) == "42.1"


def test_cuda_home_without_headers_is_rejected(tmp_path, monkeypatch):
    setup = _setup_module()
    broken = tmp_path / "cuda-broken"
    (broken / "bin").mkdir(parents=True)
    (broken / "bin" / "nvcc").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(broken))
    assert setup.find_cuda_home() != broken
