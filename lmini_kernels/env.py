"""Every environment variable lmini-kernels reads, and the one rule for reading a flag.

A flag is on when its value is ``1``, ``true``, ``yes`` or ``on`` and off when it is unset,
empty, ``0``, ``false``, ``no`` or ``off`` (any case); any other value is an error that names
the variable. Flags are read on every call (tests switch them per test), except
``LMINI_NVTX``, which :mod:`lmini_kernels.nvtx` reads once at import so that an unset flag
costs nothing. The C++ kernels read their variables with the same rule
(``csrc/include/lmini/env.h``); ``setup.py`` loads this file on its own for the build flags.
This module imports nothing from the package (setup.py runs it before anything is built).
"""

from __future__ import annotations

import os

#: name -> what it does (README's table of environment variables is this dict).
VARIABLES: dict[str, str] = {
    "TRITON_INTERPRET": "flag, Triton's own: run Triton kernels on CPU tensors through the interpreter "
    "(set before triton is imported)",
    "LMINI_CUDA_EMULATE": "flag: backend='cuda' runs the CUDA kernel bodies on CPU tensors (host SIMT layer, tests)",
    "LMINI_POISON_OUTPUTS": "flag: fill every output with NaN before a kernel writes it (the tests set it)",
    "LMINI_NVTX": "flag, read at import: NVTX ranges around every op call and model stage",
    "LMINI_CPU_ISA": "value base|avx2: cap the vector ISA of the CPU kernels (default: the best the CPU has)",
    "LMINI_PREFUSION_CPU_PATH": "value amx|vector: force the CPU prefusion_attention path for bf16 (default: AMX "
    "brgemm where the CPU has AMX, on the AVX-512 copy; amx fails without AMX)",
    "LMINI_SKIP_CUDA": "build flag: do not build the CUDA kernels",
    "LMINI_FORCE_CUDA": "build flag: fail the build when the CUDA kernels cannot be built",
    "LMINI_BUILD_EMU": "build flag: also build the host SIMT module lmini_kernels._emu (development and tests)",
    "LMINI_TEST_GPU": "tests: run the gpu-marked tests on a real GPU (verification routes off)",
    "TORCH_CUDA_ARCH_LIST": "build: CUDA architectures (default 8.0;9.0)",
    "MAX_JOBS": "build: parallel compile jobs",
}

_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})


def flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to an "on" value (see the module doc).

    Raises ValueError, naming the variable, for a value that is neither on nor off."""
    value = os.environ.get(name, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(
        f"environment variable {name}={os.environ[name]!r}: expected 1/true/yes/on or 0/false/no/off (or unset)"
    )


def triton_interpret() -> bool:
    """True when Triton kernels run through the interpreter on CPU tensors (``TRITON_INTERPRET``)."""
    return flag("TRITON_INTERPRET")


def cuda_emulate() -> bool:
    """True when ``backend="cuda"`` runs the kernels on CPU tensors through the host SIMT layer."""
    return flag("LMINI_CUDA_EMULATE")


def poison_outputs() -> bool:
    """True when outputs are filled with NaN before the kernels write them (``LMINI_POISON_OUTPUTS``)."""
    return flag("LMINI_POISON_OUTPUTS")
