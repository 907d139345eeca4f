"""Loading the compiled parts of the library, and saying clearly when they are missing.

``import lmini_kernels`` never fails because of the extension: a missing or CPU-only build
only makes the backends that need it refuse, with the reason and the command that fixes it.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` from the repository root"

_C: ModuleType | None
_emu: ModuleType | None
try:
    from lmini_kernels import _C  # type: ignore[attr-defined, no-redef]

    C_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    C_ERROR = f"the C++ extension lmini_kernels._C could not be imported ({exc}); {BUILD_HINT}"

try:
    from lmini_kernels import _emu  # type: ignore[attr-defined, no-redef]

    EMU_ERROR: str | None = None
except ImportError as exc:
    _emu = None
    EMU_ERROR = (
        f"the host SIMT module lmini_kernels._emu could not be imported ({exc}); it is built when "
        f"the CUDA headers are found: {BUILD_HINT}"
    )


def build_info() -> dict[str, Any]:
    """What the installed build compiled.

    Returns a dict with ``torch`` and ``torch_cuda`` (the torch it was built against),
    ``backends_compiled`` (``["cpu"]`` or ``["cpu", "cuda"]``), ``cuda_archs``, ``nvcc``,
    ``cuda_skipped_because``, plus ``extension_loaded``, ``emulator_loaded`` and the load
    errors, if any.
    """
    info: dict[str, Any] = {}
    if _C is not None:
        info.update(json.loads(_C.build_info_json()))
    else:
        info["backends_compiled"] = []
    info["extension_loaded"] = _C is not None
    info["extension_error"] = C_ERROR
    info["emulator_loaded"] = _emu is not None
    info["emulator_error"] = EMU_ERROR
    return info


def op_namespaces() -> list[str]:
    """The ``torch.ops`` namespaces the loaded builds define: ``lmini`` (``_C``) and
    ``lmini_emu`` (``_emu``: the CUDA kernels emulated on CPU tensors, with the same schemas).
    Every C++ op gets its fake kernel and autograd formula in each of them."""
    return [ns for ns, lib in (("lmini", _C), ("lmini_emu", _emu)) if lib is not None]


def compiled_cuda() -> bool:
    """True when ``_C`` was built with the CUDA kernels."""
    return _C is not None and "cuda" in build_info().get("backends_compiled", [])
