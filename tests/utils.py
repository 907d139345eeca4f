"""Shared test utilities: float64 comparison by relative norm, poisoned outputs, odd sizes."""

from __future__ import annotations

import torch

# Relative-error bounds against a float64 reference, by input dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}
ODD_SIZES = (1, 3, 5, 13, 37)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when out has a NaN/inf that ref has not."""
    o, r = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    if o.shape != r.shape:
        raise AssertionError(f"shape {tuple(o.shape)} != reference shape {tuple(r.shape)}")
    if not torch.isfinite(o).all() and torch.isfinite(r).all():
        return float("inf")
    denom = r.norm().item()
    return (o - r).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None, factor: float = 1.0) -> None:
    """Fail unless rel_error(out, ref) <= factor * TOLERANCE[dtype or out.dtype]."""
    tol = factor * TOLERANCE[dtype or out.dtype]
    err = rel_error(out, ref)
    assert err <= tol, f"relative error {err:.3e} > {tol:.1e} ({out.dtype}, shape {tuple(out.shape)})"


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with NaN so an element a kernel forgets to write fails the comparison."""
    return t.fill_(float("nan"))


def randn(*shape: int, dtype: torch.dtype = torch.float32, device: str = "cpu", scale: float = 1.0) -> torch.Tensor:
    """Fresh normal random values (never zeros), created in float64 then cast."""
    return (torch.randn(*shape, dtype=torch.float64, device=device) * scale).to(dtype)


def non_contiguous(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The same values as ``t`` with a non-unit gap in dimension ``dim`` (a strided view)."""
    shape = list(t.shape)
    shape[dim] *= 2
    big = torch.empty(shape, dtype=t.dtype, device=t.device)
    view = big.narrow(dim, 0, t.shape[dim] * 2)[(slice(None),) * dim + (slice(None, None, 2),)]
    view.copy_(t)
    assert not view.is_contiguous() or t.numel() <= 1
    return view


def skip_unless_isa(isa: str) -> None:
    """Skip (saying why) when this CPU cannot run the ``isa`` copy of a kernel: the kernels'
    ISA probe (csrc/include/lmini/cpu/isa.h) would silently fall back to a narrower copy, so the
    test would rerun that one under the wrong name. Same criterion as the probe: AVX-512 F+VL,
    AVX2+FMA; "base" always runs."""
    import platform

    import pytest

    if isa == "base":
        return
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"the {isa} copy exists only on x86-64 (this is {platform.machine()})")
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        cap = torch.backends.cpu.get_cpu_capability()
        flags = {"avx2", "fma"} | ({"avx512f", "avx512vl"} if cap.startswith("AVX512") else set())
    need = {"avx512": {"avx512f", "avx512vl"}, "avx2": {"avx2", "fma"}}[isa]
    if not need <= flags:
        pytest.skip(f"this CPU lacks {', '.join(sorted(need - flags))}: the {isa} copy cannot run here")
