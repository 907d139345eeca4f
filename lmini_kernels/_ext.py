"""Loading the compiled parts of the library, and saying clearly when they are missing.

``import lmini_kernels`` never fails because of the extension: a missing build, or one made
for another torch, only makes the backends that need it refuse, with the reason and the fix.
The build record (``_build_info.json``, written by setup.py beside this file) is read without
loading ``_C``, so a failed load can say which torch the build was made for and which one is
running, and a build loaded by another torch ``major.minor`` gets a warning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch  # loads libc10/libtorch, which _C links against

BUILD_HINT = "rebuild it against this torch: `pip install --no-build-isolation -e .` from the repository root"
BUILD_RECORD = Path(__file__).with_name("_build_info.json")


def read_build_record(path: Path = BUILD_RECORD) -> dict[str, Any] | None:
    """The build record written at build time, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def torch_mismatch(record: dict[str, Any] | None, running: str = torch.__version__) -> str | None:
    """ "built for torch X (CUDA c), running torch Y (CUDA d)" when the record's torch is not the
    running one (a CUDA build on a CPU torch included), else None."""
    if not record or "torch" not in record:
        return None
    built, built_cuda = str(record["torch"]), record.get("torch_cuda")
    if built == running and (built_cuda is None) == (torch.version.cuda is None):
        return None
    here = torch.version.cuda or "none"
    return f"built for torch {built} (CUDA {built_cuda or 'none'}), running torch {running} (CUDA {here})"


_RECORD = read_build_record()

_C: ModuleType | None
_emu: ModuleType | None
try:
    from lmini_kernels import _C  # type: ignore[attr-defined, no-redef]

    C_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    why = torch_mismatch(_RECORD)
    C_ERROR = f"the C++ extension lmini_kernels._C could not be imported ({exc})" + (f"; it was {why}" if why else "")
    C_ERROR += f"; {BUILD_HINT}"

try:
    from lmini_kernels import _emu  # type: ignore[attr-defined, no-redef]

    EMU_ERROR: str | None = None
except ImportError as exc:
    _emu = None
    EMU_ERROR = (
        f"the host SIMT module lmini_kernels._emu could not be imported ({exc}); it is a development build: "
        "LMINI_BUILD_EMU=1 pip install --no-build-isolation -e . (or .ci/setup), with the CUDA headers"
    )

# Read once: build_info() is called on every op call (backend availability), also while
# torch.compile traces, so it must be plain Python data.
_BUILD_INFO: dict[str, Any] = json.loads(_C.build_info_json()) if _C is not None else dict(_RECORD or {})
if _C is not None and _minor(str(_BUILD_INFO.get("torch", torch.__version__))) != _minor(torch.__version__):
    warnings.warn(
        f"lmini_kernels._C was {torch_mismatch(_BUILD_INFO)}: torch's C++ ABI changes between minor releases; "
        f"{BUILD_HINT}",
        RuntimeWarning,
        stacklevel=2,
    )


def build_info() -> dict[str, Any]:
    """What the installed build compiled.

    Returns a dict with ``torch`` and ``torch_cuda`` (the torch it was built against),
    ``backends_compiled`` (``["cpu"]`` or ``["cpu", "cuda"]``; ``[]`` when ``_C`` did not load),
    ``cuda_archs``, ``nvcc``, ``cuda_skipped_because``, plus ``extension_loaded``,
    ``emulator_loaded`` and the load errors, if any. Read once at import.
    """
    info = dict(_BUILD_INFO)
    if _C is None:
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


_COMPILED_CUDA = _C is not None and "cuda" in _BUILD_INFO.get("backends_compiled", [])


def compiled_cuda() -> bool:
    """True when ``_C`` was built with the CUDA kernels."""
    return _COMPILED_CUDA
