"""Backend selection for every op.

Each op has one :class:`OpRegistry` holding its backends in speed order. A backend answers
two questions, in the manner of xformers' ``not_supported_reasons``:

* :meth:`Backend.unavailable_reason`: can it run in this process at all (extension built,
  Triton installed, a GPU present, or an emulation route switched on)?
* :meth:`Backend.not_supported_reasons`: can it run *these* inputs (device, dtype, sizes)?

``backend="auto"`` takes the first backend with no reason against it; an explicit backend
that cannot run raises :class:`NotSupportedError` listing every reason.

Two verification routes run GPU kernels on CPU tensors and are never chosen by ``auto``:

* ``TRITON_INTERPRET=1`` (set before Triton is imported): ``backend="triton"`` runs on CPU
  tensors through Triton's interpreter.
* ``LMINI_CUDA_EMULATE=1``: ``backend="cuda"`` runs the CUDA kernel bodies on CPU tensors
  through the host SIMT layer (``lmini_kernels._emu``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
FLOAT_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})


class NotSupportedError(ValueError):
    """An explicitly requested backend cannot run the given inputs; the message says why."""


@dataclass
class Backend:
    """One implementation of an op and what it supports.

    ``devices`` and ``dtypes`` are checked for every tensor passed as ``tensors`` to
    :meth:`not_supported_reasons`; ``check`` adds op-specific limits (head dims, sizes).
    """

    name: str
    run: Callable[..., object]
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype] = FLOAT_DTYPES
    availability: Callable[[], str | None] = lambda: None
    check: Callable[..., list[str]] | None = None
    # Routes on CPU tensors used only to verify GPU kernels: never picked by "auto".
    verification_devices: Callable[[], frozenset[str]] = lambda: frozenset()
    verification_dtypes: frozenset[torch.dtype] | None = None

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run in this process, or None."""
        return self.availability()

    def not_supported_reasons(
        self, tensors: dict[str, torch.Tensor | None], *, auto: bool = False, **params
    ) -> list[str]:
        """Every reason this backend cannot run these inputs (empty when it can)."""
        reasons: list[str] = []
        why = self.unavailable_reason()
        if why:
            return [why]
        verify_devices = frozenset() if auto else self.verification_devices()
        for arg, t in tensors.items():
            if t is None:
                continue
            dev = t.device.type
            if dev in self.devices:
                dtypes = self.dtypes
            elif dev in verify_devices:
                dtypes = self.verification_dtypes or self.dtypes
            else:
                allowed = sorted(self.devices | verify_devices)
                reasons.append(f"{arg} is on {dev}, this backend runs on {', '.join(allowed) or 'no device here'}")
                continue
            if t.is_floating_point() and t.dtype not in dtypes:
                names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
                reasons.append(f"{arg} has dtype {str(t.dtype).removeprefix('torch.')}, this backend supports {names}")
        if self.check is not None and not reasons:
            reasons += self.check(**params)
        return reasons


@dataclass
class OpRegistry:
    """The backends of one op, fastest first."""

    op: str
    backends: list[Backend] = field(default_factory=list)

    def register(self, backend: Backend) -> Backend:
        if backend.name not in BACKENDS:
            raise ValueError(f"unknown backend name {backend.name!r}; expected one of {BACKENDS}")
        self.backends.append(backend)
        return backend

    def get(self, name: str) -> Backend:
        for b in self.backends:
            if b.name == name:
                return b
        known = ", ".join(b.name for b in self.backends)
        raise NotSupportedError(f"{self.op}: unknown backend {name!r}; expected 'auto' or one of: {known}")

    def available(self) -> list[str]:
        """Backends that can run in this process (on some inputs)."""
        out = []
        for b in self.backends:
            if b.unavailable_reason() is not None:
                continue
            if not (b.devices <= {"cuda"}) or torch.cuda.is_available() or b.verification_devices():
                out.append(b.name)
        return out

    def select(self, backend: str, tensors: dict[str, torch.Tensor | None], **params) -> Backend:
        """The backend to run: ``backend`` itself if it can, else the first that can for "auto"."""
        if backend == "auto":
            tried = []
            for b in self.backends:
                reasons = b.not_supported_reasons(tensors, auto=True, **params)
                if not reasons:
                    return b
                tried.append(f"  {b.name}: " + "; ".join(reasons))
            raise NotSupportedError(f"{self.op}: no backend supports these inputs:\n" + "\n".join(tried))
        b = self.get(backend)
        reasons = b.not_supported_reasons(tensors, **params)
        if reasons:
            raise NotSupportedError(f"{self.op}: backend {backend!r} cannot run these inputs: " + "; ".join(reasons))
        return b


REGISTRIES: dict[str, OpRegistry] = {}


def registry(op: str) -> OpRegistry:
    """The registry of ``op``, created on first use."""
    return REGISTRIES.setdefault(op, OpRegistry(op))


def available_backends(op: str) -> list[str]:
    """Names of the backends of ``op`` that can run in this process.

    ``op`` is an op name such as ``"compress"``, ``"prefusion_attention"`` or
    ``"row_softmax"``. A backend is listed when it can run some inputs here: ``cpu`` when the
    extension is built, ``triton`` and ``cuda`` when a GPU is present (or their CPU
    verification routes are switched on), ``reference`` always.
    """
    if op not in REGISTRIES:
        known = ", ".join(sorted(REGISTRIES))
        raise KeyError(f"unknown op {op!r}; known ops: {known}")
    return REGISTRIES[op].available()
