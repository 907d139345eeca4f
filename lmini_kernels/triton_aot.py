"""Ahead-of-time compilation of the Triton kernels for GPU targets, with no GPU.

Each Triton module lists :class:`AotSpec` entries (kernel, argument types, constexprs, warps)
in ``AOT_SPECS``; :func:`compile_spec` compiles one for an sm_XX target and reports shared
memory (from Triton's metadata) and registers and spills (from ``ptxas -v`` on the PTX, with
the ptxas Triton bundles). ``tests/build/test_compile_triton.py`` runs every spec for sm_80 and
sm_90 in a subprocess without ``TRITON_INTERPRET`` and fails on a config that cannot fit
(``LMINI_AOT_ARCHS=90`` there, ``--arch 90`` here: one target only).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Every op's Triton kernels live in ``lmini_kernels/ops/<op>/triton.py``, which lists its
#: ``AOT_SPECS``; a new op is found here without being named.
TRITON_MODULE_GLOB = "*/triton.py"

# Per-block shared memory a kernel may use (opt-in maximum), bytes.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


@dataclass
class AotSpec:
    """One compile of one Triton kernel: argument types (Triton signature strings such as
    ``"*fp16"``, ``"i32"``, ``"fp32"``), constexpr values and launch options."""

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3


def triton_modules() -> list[str]:
    """The module names of every op's Triton kernel file (``lmini_kernels.ops.<op>.triton``)."""
    ops_dir = Path(__file__).resolve().parent / "ops"
    return [f"lmini_kernels.ops.{p.parent.name}.triton" for p in sorted(ops_dir.glob(TRITON_MODULE_GLOB))]


def all_specs() -> list[AotSpec]:
    """Every AOT spec of every Triton module of the library."""
    specs: list[AotSpec] = []
    for mod in triton_modules():
        specs += importlib.import_module(mod).AOT_SPECS
    return specs


def _ptxas() -> str:
    """The ptxas Triton bundles: it assembles the PTX Triton emits, for every target arch."""
    import triton.backends.nvidia as nv

    return os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")


def compile_spec(spec: AotSpec, arch: int) -> dict[str, Any]:
    """Compile ``spec`` for sm_``arch``; return name, arch, shared bytes, registers, spill bytes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(spec.signature)
    for k in spec.constexprs:
        sig[k] = "constexpr"
    src = ASTSource(fn=spec.fn, signature=sig, constexprs=dict(spec.constexprs))
    compiled = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
    )
    shared = int(compiled.metadata.shared)
    ptx = compiled.asm["ptx"]
    # ptxas of the PTX version Triton emitted gives registers and spills without a GPU.
    ptx_arch = f"sm_{arch}a" if arch == 90 and ".target sm_90a" in ptx else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [_ptxas(), f"-arch={ptx_arch}", "-v", path, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
        )
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed for {spec.name} sm_{arch}:\n{out.stderr}")
    report = parse_ptxas(out.stderr)
    return {"name": spec.name, "arch": arch, "shared_bytes": shared, **report}


def parse_ptxas(text: str) -> dict[str, int]:
    """Registers, spill stores/loads (bytes) and static shared memory from ``ptxas -v`` output
    (the last function reported)."""
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    smem = re.findall(r"(\d+) bytes smem", text)
    if not regs:
        raise ValueError(f"no register report in ptxas output:\n{text}")
    st, ld = (int(spills[-1][0]), int(spills[-1][1])) if spills else (0, 0)
    return {
        "registers": int(regs[-1]),
        "spill_stores": st,
        "spill_loads": ld,
        "static_smem": int(smem[-1]) if smem else 0,
    }


def main(argv: list[str] | None = None) -> int:
    """Compile every spec for sm_80 and sm_90 (or the ``--arch`` ones); print a table as JSON;
    non-zero exit on any failure."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m lmini_kernels.triton_aot", description=main.__doc__)
    parser.add_argument(
        "--arch", type=int, action="append", choices=sorted(SHARED_LIMIT), help="sm_XX target (repeatable; default all)"
    )
    archs = parser.parse_args(argv).arch or sorted(SHARED_LIMIT)
    failures = 0
    rows = []
    for spec in all_specs():
        for arch in archs:
            try:
                r = compile_spec(spec, arch)
                fits = r["shared_bytes"] <= SHARED_LIMIT[arch] and r["spill_stores"] == 0 and r["spill_loads"] == 0
                r["ok"] = fits
                failures += not fits
            except Exception as exc:  # report every failure, not just the first
                r = {"name": spec.name, "arch": arch, "ok": False, "error": str(exc)[-2000:]}
                failures += 1
            rows.append(r)
    json.dump(rows, sys.stdout, indent=1)
    print()
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
