"""Build lmini-kernels: one torch extension, ``lmini_kernels._C``, plus, for development and
tests, the torch extension ``lmini_kernels._emu`` (the CUDA kernels emulated on the CPU).

Every op lives in ``csrc/ops/<op>/``; the sources are collected by glob, so adding an op
touches neither this file nor any shared C++ file.

* CPU kernels (``csrc/ops/*/cpu.cpp``, each declaring its op's schema) always build, with
  OpenMP.
* CUDA kernels (``csrc/ops/*/launcher.cu``, torch-free, and their registrations
  ``csrc/ops/*/cuda.cpp``) build when torch has CUDA and a CUDA toolkit is found.
  ``LMINI_FORCE_CUDA=1`` refuses to build without them (one line, before compiling);
  ``LMINI_SKIP_CUDA=1`` skips them. Architectures: ``TORCH_CUDA_ARCH_LIST``, default ``8.0;9.0``.
* ``_emu`` (``csrc/ops/*/emu.cpp``: each launcher compiled by g++ against the host SIMT layer
  ``csrc/emu/simt.h``, registered as ``torch.ops.lmini_emu.<op>`` with the schema and the
  CUDA glue of ``lmini::<op>``, on CPU tensors) builds only with ``LMINI_BUILD_EMU=1`` (what
  ``.ci/setup`` does) and the CUDA headers; it needs no GPU and no CUDA torch.
* ``MAX_JOBS`` limits parallel compile jobs (ninja).

**torch is not a build requirement**: the extension is built against the torch already
installed, found even under pip's build isolation (which hides it from sys.path) in this
interpreter's site-packages (a venv's own, the system's that a venv includes, or a directory a
``.pth`` file there adds); with no torch a build refuses in one line (an sdist needs
none). What was built, and for which torch, is written to ``lmini_kernels/_build_info.json``
(readable without loading ``_C``), and the wheel requires that torch's ``major.minor``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _load_env_module():
    """lmini_kernels/env.py on its own (it imports nothing from the package): the one flag rule."""
    spec = importlib.util.spec_from_file_location("lmini_env", ROOT / "lmini_kernels" / "env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_env_flag = _load_env_module().flag


def find_cuda_home() -> Path | None:
    """Locate the CUDA toolkit root: a directory with bin/nvcc and include/cuda_runtime.h.

    torch guesses the root from ``which nvcc``; where nvcc is a wrapper script (as on our
    machines: /usr/local/bin/nvcc execs /usr/local/cuda-13.0/bin/nvcc) that guess is wrong,
    so we also follow the wrapper and fall back to the usual locations.
    """
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        candidates.append(real.parent.parent)
        try:  # a shell wrapper: `exec /path/to/nvcc "$@"`
            text = real.read_text(errors="ignore")[:4096]
            m = re.search(r"(/\S+)/bin/nvcc", text)
            if m:
                candidates.append(Path(m.group(1)))
        except OSError:
            pass
    candidates += [Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"), reverse=True)]
    for c in candidates:
        if (c / "bin" / "nvcc").exists() and (c / "include" / "cuda_runtime.h").exists():
            return c
    return None


def nvcc_version(cuda_home: Path) -> str | None:
    try:
        out = subprocess.run([str(cuda_home / "bin" / "nvcc"), "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out.stdout)
    return m.group(1) if m else None


def nvidia_wheel_includes() -> list[str]:
    """Headers of the nvidia-* wheels (cusparse, cublas, ...) that torch's CUDA headers include."""
    dirs: list[str] = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


#: setup.py commands that need no torch (sdist and its metadata).
NO_TORCH_COMMANDS = {"sdist", "egg_info", "check", "clean"}


def needs_torch(argv: list[str]) -> bool:
    """Whether ``setup.py <argv>`` builds (and so needs torch): its command, the first argument
    that is not a global option (``-q sdist`` is an sdist), is not one of NO_TORCH_COMMANDS.
    Options alone (``--help``, ``--version``, ``--name``) query metadata and need none."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return command is not None and command not in NO_TORCH_COMMANDS


NO_TORCH = (
    "lmini-kernels is built against the torch already installed in this environment, and there is none: "
    "install torch first (pip install torch), then pip install --no-build-isolation ."
)


def site_dirs(roots: list[str] | None = None) -> list[str]:
    """Where this interpreter finds installed packages, as pip's build isolation sees them: each
    site-packages directory (a venv's own, then the system's when the venv includes it), each
    followed by the directories that its ``.pth`` files add. Under isolation pip hides all of
    them from sys.path."""
    if roots is None:
        import site
        import sysconfig

        paths = sysconfig.get_paths()
        roots = [paths.get("purelib"), paths.get("platlib"), *site.getsitepackages()]
    dirs: list[str] = []
    for root in roots:
        if not root or root in dirs or not os.path.isdir(root):
            continue
        dirs.append(root)
        for pth in sorted(Path(root).glob("*.pth")):
            for line in pth.read_text(errors="ignore").splitlines():
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                d = os.path.join(root, line)  # as site.addsitedir reads it
                if os.path.isdir(d) and d not in dirs:
                    dirs.append(d)
    return dirs


def torch_site_dir(dirs: list[str]) -> str | None:
    """The first of ``dirs`` that holds the torch package."""
    return next((d for d in dirs if (Path(d) / "torch" / "__init__.py").is_file()), None)


def import_build_torch():
    """The installed torch, or None. Under pip's build isolation this interpreter's site-packages
    (where the user's torch lives) is hidden from sys.path; the directory that holds torch is
    appended (after the isolated build tools) so that the build uses that torch instead of
    fetching another."""
    try:
        import torch

        return torch
    except ImportError:
        pass
    site_dir = torch_site_dir(site_dirs())
    if site_dir is None:
        return None
    if site_dir not in sys.path:
        sys.path.append(site_dir)
    try:
        import torch

        return torch
    except ImportError:
        return None


def plan_cuda(*, skip: bool, force: bool, cuda_home: Path | None, torch_version: str, torch_cuda: str | None):
    """(build the CUDA kernels?, the reasons they are not built). ``LMINI_FORCE_CUDA=1`` with a
    reason against them is a SystemExit naming every reason, raised before anything compiles."""
    reasons: list[str] = []
    if skip:
        reasons.append("LMINI_SKIP_CUDA=1")
    if cuda_home is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME)")
    if torch_cuda is None:
        reasons.append(f"torch {torch_version} is a CPU-only build (the CUDA kernels link against its CUDA libraries)")
    if force and reasons:
        raise SystemExit(f"LMINI_FORCE_CUDA=1 but the CUDA kernels cannot be built: {'; '.join(reasons)}")
    return not reasons, reasons


def torch_requirement(torch_version: str) -> str:
    """The torch a wheel built against ``torch_version`` needs: the same major.minor (the C++
    ABI of torch changes between minor releases)."""
    major, minor = torch_version.split("+")[0].split(".")[:2]
    return f"torch=={major}.{minor}.*"


RUNTIME_REQUIRES = ["numpy", "safetensors", "nvidia-ml-py"]


def _packages() -> dict:
    packages = find_packages(include=["lmini_kernels", "lmini_kernels.*"])
    # python/: the reference model (llava_mini) and the tools above library and model (lmini_tools)
    above = find_packages(where="python", include=["llava_mini", "llava_mini.*", "lmini_tools", "lmini_tools.*"])
    return dict(
        packages=packages + above,
        package_dir={top: f"python/{top}" for top in ("llava_mini", "lmini_tools")},
        package_data={"lmini_kernels": ["_build_info.json"]},
    )


def main() -> None:
    torch = import_build_torch()
    if torch is None:
        if not needs_torch(sys.argv[1:]):  # an sdist: sources only, any torch at install
            setup(install_requires=["torch>=2.6", *RUNTIME_REQUIRES], **_packages())
            return
        raise SystemExit(NO_TORCH)
    from torch.utils import cpp_extension

    cuda_home = find_cuda_home()
    build_cuda, reasons = plan_cuda(
        skip=_env_flag("LMINI_SKIP_CUDA"),
        force=_env_flag("LMINI_FORCE_CUDA"),
        cuda_home=cuda_home,
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
    )

    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    if build_cuda:
        # torch reads these at import time and from the environment; set both.
        os.environ["CUDA_HOME"] = str(cuda_home)
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        cpp_extension.CUDA_HOME = str(cuda_home)

    info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "compiler": os.environ.get("CXX", "c++"),
        "backends_compiled": ["cpu"] + (["cuda"] if build_cuda else []),
        "cuda_toolkit": str(cuda_home) if cuda_home else None,
        "nvcc": nvcc_version(cuda_home) if cuda_home else None,
        "cuda_archs": arch_list.replace(",", ";").split(";") if build_cuda else [],
        "cuda_skipped_because": None if build_cuda else ("; ".join(reasons) or "unknown"),
        "openmp": True,
    }
    gen = CSRC / "generated"
    gen.mkdir(exist_ok=True)
    header = f'#pragma once\n#define LMINI_BUILD_INFO_JSON R"lmini({json.dumps(info)})lmini"\n'
    if not (gen / "build_info.h").exists() or (gen / "build_info.h").read_text() != header:
        (gen / "build_info.h").write_text(header)
    # the same record as a file: lmini_kernels reads it when _C cannot load (another torch)
    (ROOT / "lmini_kernels" / "_build_info.json").write_text(json.dumps(info, indent=1) + "\n")

    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    include_dirs = [str(CSRC / "include"), str(CSRC)]
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-Wno-unused-function"]
    sources = rel([CSRC / "module.cpp", *CSRC.glob("ops/*/cpu.cpp")])
    if build_cuda:
        sources += rel([*CSRC.glob("ops/*/launcher.cu"), *CSRC.glob("ops/*/cuda.cpp")])
        ext = cpp_extension.CUDAExtension(
            "lmini_kernels._C",
            sources,
            include_dirs=include_dirs + nvidia_wheel_includes(),
            extra_compile_args={
                "cxx": cxx_flags,
                # -lineinfo: Nsight Compute maps samples to source lines.
                "nvcc": ["-O3", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr"],
            },
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "lmini_kernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ext_modules = [ext]

    if cuda_home is not None and _env_flag("LMINI_BUILD_EMU"):
        # A CPU-only torch extension: the CUDA toolkit gives only headers (cuda_fp16.h etc.).
        ext_modules.append(
            cpp_extension.CppExtension(
                "lmini_kernels._emu",
                rel([CSRC / "emu" / "module.cpp", *CSRC.glob("ops/*/emu.cpp")]),
                include_dirs=[str(cuda_home / "include"), *include_dirs],
                define_macros=[("LMINI_EMU", "1")],
                extra_compile_args={"cxx": ["-O2", "-std=c++20", "-pthread", "-Wno-unused-function"]},
                extra_link_args=["-pthread"],
            )
        )

    setup(
        install_requires=[torch_requirement(torch.__version__), *RUNTIME_REQUIRES],
        **_packages(),
        ext_modules=ext_modules,
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
