"""Every Triton kernel config compiles ahead of time for sm_80 and sm_90, with no GPU.

Runs ``python -m lmini_kernels.triton_aot`` in a subprocess without ``TRITON_INTERPRET``
(the suite sets it for the interpreter tests, and interpreted kernels cannot be compiled),
and fails on any config that does not compile, spills, or needs more shared memory than the
architecture offers. ``LMINI_AOT_ARCHS=90`` compiles for sm_90 only (``.ci/compat``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmini_kernels.triton_aot import SHARED_LIMIT, parse_ptxas


def aot_archs() -> list[int]:
    """The targets to compile for: ``LMINI_AOT_ARCHS`` (comma-separated, e.g. ``90``; default all)."""
    value = os.environ.get("LMINI_AOT_ARCHS", "").strip()
    if not value:
        return sorted(SHARED_LIMIT)
    try:
        archs = {int(a) for a in value.split(",")}
    except ValueError:
        archs = set()
    if not archs or not archs <= set(SHARED_LIMIT):
        raise ValueError(f"LMINI_AOT_ARCHS={value!r}: expected comma-separated targets from {sorted(SHARED_LIMIT)}")
    return sorted(archs)


def test_triton_kernels_compile_for_sm80_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    archs = aot_archs()
    cmd = [sys.executable, "-m", "lmini_kernels.triton_aot"] + [f"--arch={a}" for a in archs]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    start = out.stdout.find("[")
    assert start >= 0, f"no report from the AOT compile:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    rows = json.loads(out.stdout[start:])
    assert rows, "no Triton kernels were compiled"
    for r in rows:
        print(json.dumps(r))
    bad = [r for r in rows if not r["ok"]]
    assert not bad, "configs that do not compile or do not fit:\n" + "\n".join(json.dumps(r)[:600] for r in bad)
    assert {r["arch"] for r in rows} == set(archs)
    for r in rows:
        assert r["shared_bytes"] <= SHARED_LIMIT[r["arch"]]
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0
    assert out.returncode == 0


def test_parse_ptxas_reports_registers_and_spills():
    text = (
        "ptxas info    : Used 40 registers, used 1 barriers, 16 bytes smem\n"
        "    0 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads\n"
    )
    r = parse_ptxas(text)
    assert r["registers"] == 40 and r["spill_stores"] == 12 and r["spill_loads"] == 8 and r["static_smem"] == 16


@pytest.mark.parametrize(("value", "want"), [("", [80, 90]), ("90", [90]), ("90,80", [80, 90]), (" 80 ", [80])])
def test_aot_archs_from_the_environment(monkeypatch, value, want):
    monkeypatch.setenv("LMINI_AOT_ARCHS", value)
    assert aot_archs() == want


@pytest.mark.parametrize("value", ["70", "sm_90", "90,", "80;90"])
def test_aot_archs_refuses_unknown_targets(monkeypatch, value):
    monkeypatch.setenv("LMINI_AOT_ARCHS", value)
    with pytest.raises(ValueError, match="LMINI_AOT_ARCHS"):
        aot_archs()
