"""Factories for the four kinds of backend, so every op states its backends the same way.

An op's ``api.py`` builds its :class:`~lmini_kernels.dispatch.OpRegistry` with these, in
speed order, passing its own run functions and limits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

from lmini_kernels import _ext
from lmini_kernels.dispatch import FLOAT_DTYPES, Backend
from lmini_kernels.env import cuda_emulate, triton_interpret

# The interpreter computes bf16 on raw bits (verification.md): refuse it there.
INTERPRETER_DTYPES = frozenset({torch.float32, torch.float16})


_INTERPRETER_LOCK = threading.RLock()


@contextlib.contextmanager
def triton_launch(kernels: ModuleType) -> Iterator[None]:
    """Around every call into an op's Triton kernel module ``kernels`` (its ``triton.py``).

    Triton fixes a kernel's mode (compiled or interpreted) when the kernel is decorated, that is
    when ``kernels`` was imported, and records it as ``kernels.INTERPRETED``. A
    ``TRITON_INTERPRET`` changed since then would end in Triton's "0 active drivers" (or run a
    CPU interpreter on GPU tensors): refused here with what to do. Launches through the
    interpreter are serialised (it is not thread-safe); compiled launches are not."""
    now = triton_interpret()
    if kernels.INTERPRETED != now:
        raise RuntimeError(
            f"TRITON_INTERPRET is {'set' if now else 'unset'} now but was {'set' if kernels.INTERPRETED else 'unset'} "
            f"when the Triton kernels of {kernels.__name__} were imported (Triton fixes the mode then); set it "
            "before the first Triton call of the process, or restart the process"
        )
    if not now:
        yield
        return
    with _INTERPRETER_LOCK:
        yield


def _cpu_availability() -> str | None:
    return _ext.C_ERROR


def _triton_availability() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if not triton_interpret() and not torch.cuda.is_available():
        return "no CUDA GPU here; set TRITON_INTERPRET=1 before importing triton to run Triton kernels on CPU tensors"
    return None


def _cuda_availability() -> str | None:
    if cuda_emulate():
        return _ext.EMU_ERROR
    if _ext._C is None:
        return _ext.C_ERROR
    if not _ext.compiled_cuda():
        why = _ext.build_info().get("cuda_skipped_because")
        return f"lmini_kernels._C was built without CUDA kernels ({why}); {_ext.BUILD_HINT} on a machine with CUDA"
    if not torch.cuda.is_available():
        return "no CUDA GPU here; set LMINI_CUDA_EMULATE=1 to run the CUDA kernels on CPU tensors (slow, for tests)"
    return None


def _cpu_route_when(switch: Callable[[], bool]) -> Callable[[], frozenset[str]]:
    """A GPU backend's verification route: CPU tensors while ``switch()`` is on."""
    return lambda: frozenset({"cpu"}) if switch() else frozenset()


def reference_backend(run: Callable[..., object], check: Callable[..., list[str]] | None = None) -> Backend:
    """Plain PyTorch, any device (meta included), float16 to float64: the oracle."""
    return Backend(
        "reference", run, devices=frozenset({"cpu", "cuda", "meta"}), dtypes=FLOAT_DTYPES | {torch.float64}, check=check
    )


def cpu_backend(run: Callable[..., object], check: Callable[..., list[str]] | None = None) -> Backend:
    """C++/OpenMP kernels in ``lmini_kernels._C``; CPU tensors in fp32/fp16/bf16."""
    return Backend("cpu", run, devices=frozenset({"cpu"}), availability=_cpu_availability, check=check)


def _gpu_backend(name: str, run, availability, switch: Callable[[], bool], check, **kw) -> Backend:
    """A backend of CUDA tensors whose kernels also run on CPU tensors while ``switch()`` is on
    (its verification route, never chosen by auto)."""
    return Backend(name, run, devices=frozenset({"cuda"}), availability=availability, check=check,
                   verification_devices=_cpu_route_when(switch), **kw)  # fmt: skip


def triton_backend(
    run: Callable[..., object],
    check: Callable[..., list[str]] | None = None,
    dtypes: frozenset[torch.dtype] = FLOAT_DTYPES,
) -> Backend:
    """Triton kernels: CUDA tensors, or CPU tensors (fp32/fp16) under ``TRITON_INTERPRET=1``."""
    return _gpu_backend("triton", run, _triton_availability, triton_interpret, check, dtypes=dtypes,
                        verification_dtypes=INTERPRETER_DTYPES & dtypes)  # fmt: skip


def cuda_backend(
    run: Callable[..., object],
    run_emulated: Callable[..., object],
    check: Callable[..., list[str]] | None = None,
) -> Backend:
    """CUDA kernels in ``lmini_kernels._C``; on CPU tensors under ``LMINI_CUDA_EMULATE=1`` the
    same kernel bodies run through the host SIMT layer (``run_emulated``)."""

    def dispatch(*args, **kwargs):
        first = next(a for a in args if isinstance(a, torch.Tensor))
        return (run if first.device.type == "cuda" else run_emulated)(*args, **kwargs)

    return _gpu_backend("cuda", dispatch, _cuda_availability, cuda_emulate, check)
