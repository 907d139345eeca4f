"""Every CUDA translation unit compiles for sm_80 and sm_90, with the resource report checked.

``csrc/ops/*/launcher.cu`` are torch-free launchers over their op's kernel header
(``kernel.cuh``), so nvcc compiles each in seconds. ``-Xptxas -v`` is parsed per kernel: a
spill fails unless the kernel's source carries ``lmini-allow-spills: <kernel name fragment>:
<reason>``; static shared memory must fit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CU_FILES = sorted((ROOT / "csrc" / "ops").glob("*/launcher.cu"))
ARCHS = (80, 90)
STATIC_SMEM_LIMIT = 48 * 1024  # static __shared__ is capped at 48 KiB; more needs dynamic opt-in


def _nvcc() -> str:
    for cand in ("/usr/local/cuda/bin/nvcc", shutil.which("nvcc")):
        if cand and Path(cand).exists():
            return cand
    raise AssertionError("nvcc not found: the CUDA compile check needs the CUDA toolkit")


def parse_ptxas(text: str) -> list[dict]:
    """One dict per compiled entry function: name, registers, spills, static smem."""
    kernels: list[dict] = []
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'", line)
        if m:
            current = {"name": m.group(1), "arch": m.group(2), "spill_stores": 0, "spill_loads": 0}
            kernels.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill_stores"], current["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            sm = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(sm.group(1)) if sm else 0
    return kernels


def _allowed_spills(cu: Path) -> list[str]:
    """The documented spills of a launcher and of the headers it includes from its op's folder
    or from lmini/kernels/."""
    text = cu.read_text()
    for inc in re.findall(r'#include "([^"]+)"', text):
        for base in (cu.parent, ROOT / "csrc" / "include"):
            if (base / inc).is_file() and (base == cu.parent or inc.startswith("lmini/kernels/")):
                text += (base / inc).read_text()
                break
    return re.findall(r"lmini-allow-spills:\s*(\S+):", text)


def _compile(cu: Path, arch: int, tmp: Path) -> subprocess.CompletedProcess:
    cmd = [
        _nvcc(),
        "-std=c++20",
        "-O3",
        "-cubin",
        f"-arch=sm_{arch}",
        "-Xptxas",
        "-v",
        "--expt-relaxed-constexpr",
        f"-I{ROOT / 'csrc' / 'include'}",
        f"-I{ROOT / 'csrc'}",
        str(cu),
        "-o",
        str(tmp / f"{cu.stem}_{arch}.cubin"),
    ]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_there_are_cuda_sources():
    assert CU_FILES, "no csrc/ops/*/launcher.cu found"


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.parent.name)
def test_cuda_compiles_sm80_sm90(cu, tmp_path):
    with ThreadPoolExecutor(len(ARCHS)) as pool:
        results = dict(zip(ARCHS, pool.map(lambda a: _compile(cu, a, tmp_path), ARCHS), strict=True))
    allowed = _allowed_spills(cu)
    for arch, res in results.items():
        assert res.returncode == 0, f"nvcc failed for {cu.parent.name} sm_{arch}:\n{res.stderr[-4000:]}"
        kernels = parse_ptxas(res.stderr)
        assert kernels, f"no kernels reported by ptxas for {cu.parent.name} sm_{arch}:\n{res.stderr[-2000:]}"
        for k in kernels:
            print(
                f"{cu.parent.name} sm_{arch} {k['name'][:60]}: {k.get('registers')} regs, {k['smem']} B smem, "
                f"spills {k['spill_stores']}/{k['spill_loads']} B"
            )
            assert k.get("registers") is not None, f"no register report for {k['name']}"
            assert k["smem"] <= STATIC_SMEM_LIMIT, f"{k['name']} sm_{arch}: {k['smem']} B static smem > 48 KiB"
            if k["spill_stores"] or k["spill_loads"]:
                assert any(a in k["name"] for a in allowed), (
                    f"{k['name']} spills on sm_{arch} ({k['spill_stores']} B stores, {k['spill_loads']} B loads) "
                    "and its source does not document why (lmini-allow-spills: <name>: <reason>)"
                )


def test_parse_ptxas_sees_spills():
    sample = (
        "ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z1kPf\n"
        "    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 368 bytes cmem[0]\n"
    )
    (k,) = parse_ptxas(sample)
    assert (k["registers"], k["spill_stores"], k["spill_loads"], k["smem"]) == (255, 8, 4, 1024)
