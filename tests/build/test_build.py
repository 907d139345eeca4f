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


def test_force_cuda_refuses_before_compiling_and_names_every_reason():
    setup = _setup_module()
    build, reasons = setup.plan_cuda(
        skip=False, force=False, cuda_home=Path("/x"), torch_version="2.14.1", torch_cuda="13.0"
    )
    assert build and reasons == []
    build, reasons = setup.plan_cuda(skip=False, force=False, cuda_home=None, torch_version="2.13.0", torch_cuda=None)
    assert not build and len(reasons) == 2 and "CPU-only" in reasons[1]
    import pytest

    with pytest.raises(SystemExit, match="LMINI_FORCE_CUDA=1.*torch 2.13.0 is a CPU-only build"):
        setup.plan_cuda(skip=False, force=True, cuda_home=Path("/x"), torch_version="2.13.0", torch_cuda=None)


def test_wheels_require_the_torch_minor_they_were_built_for():
    setup = _setup_module()
    assert setup.torch_requirement("2.14.1+cu130") == "torch==2.14.*"
    assert setup.torch_requirement("2.13.0") == "torch==2.13.*"


def test_build_record_and_the_message_of_a_build_for_another_torch(tmp_path):
    """A package whose _C cannot load says which torch it was built for and which one runs, from
    the build record file (a bogus _C stands in for one built against another torch)."""
    import json
    import shutil
    import subprocess
    import sys

    from lmini_kernels import _ext

    assert _ext.read_build_record(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert _ext.read_build_record(tmp_path / "bad.json") is None
    assert _ext.torch_mismatch(None) is None
    import torch

    same = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    assert _ext.torch_mismatch(same) is None
    assert "built for torch 2.13.0" in _ext.torch_mismatch({"torch": "2.13.0", "torch_cuda": None})

    pkg = tmp_path / "site" / "lmini_kernels"
    shutil.copytree(ROOT / "lmini_kernels", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (pkg / "_build_info.json").write_text(
        json.dumps({"torch": "2.13.0", "torch_cuda": None, "backends_compiled": ["cpu"]})
    )
    import sysconfig

    (pkg / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}").write_bytes(b"not a shared object")
    code = "import lmini_kernels as lk, json; print(json.dumps(lk.build_info()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert not info["extension_loaded"] and info["backends_compiled"] == []
    assert "built for torch 2.13.0 (CUDA none), running torch " + torch.__version__ in info["extension_error"]
    assert "--no-build-isolation" in info["extension_error"]


def test_the_build_finds_torch_where_build_isolation_hides_it(tmp_path):
    """Under pip's build isolation the build looks for torch in every site-packages directory the
    interpreter has (a venv's own, then the system's a venv includes) and in the directories their
    .pth files add, as site.py does; a torch elsewhere, or a bare torch/ folder, is not taken."""
    setup = _setup_module()
    venv_site, system_site, pth_dir, other = (tmp_path / n for n in ("venv", "system", "pth-target", "other"))
    for d in (venv_site, system_site, pth_dir, other):
        d.mkdir()
    (other / "torch").mkdir()  # named by nothing: never taken
    (venv_site / "torch").mkdir()  # no __init__.py: not a package
    (venv_site / "deps.pth").write_text(f"# a comment\nimport os\n{pth_dir}\n../missing\n")
    dirs = setup.site_dirs([str(venv_site), str(venv_site), None, str(system_site), str(tmp_path / "absent")])
    assert dirs == [str(venv_site), str(pth_dir), str(system_site)]
    assert setup.torch_site_dir(dirs) is None
    (system_site / "torch").mkdir()
    (system_site / "torch" / "__init__.py").write_text("")
    assert setup.torch_site_dir(dirs) == str(system_site)  # a venv with --system-site-packages
    (pth_dir / "torch").mkdir()
    (pth_dir / "torch" / "__init__.py").write_text("")
    assert setup.torch_site_dir(dirs) == str(pth_dir)  # a .pth in the venv's site-packages, first


def test_an_sdist_needs_no_torch_whatever_the_global_options():
    setup = _setup_module()
    for argv in (["sdist"], ["-q", "sdist", "-d", "dist"], ["--quiet", "egg_info"], ["--version"], ["--help"], []):
        assert not setup.needs_torch(argv), argv
    for argv in (["bdist_wheel"], ["-q", "build_ext", "--inplace"], ["dist_info"], ["-v", "develop"]):
        assert setup.needs_torch(argv), argv
