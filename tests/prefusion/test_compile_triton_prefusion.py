"""The Triton pre-fusion kernels compile ahead of time for sm_80 and sm_90 with no spills and
within shared memory (a subset here; ``python -m lmini_kernels.triton_aot`` compiles all)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
from lmini_kernels.triton_aot import SHARED_LIMIT, compile_spec
from lmini_kernels.ops.prefusion_attention.triton import AOT_SPECS
rows = []
for spec in AOT_SPECS:
    if spec.name in sys.argv[2:]:
        r = compile_spec(spec, int(sys.argv[1]))
        r["fits"] = r["shared_bytes"] <= SHARED_LIMIT[r["arch"]]
        rows.append(r)
print(json.dumps(rows))
"""

NAMES = [
    "prefusion_attn_fwd[fp16,d=128,split=False]",
    "prefusion_attn_fwd[bf16,d=80,split=True]",
    "prefusion_attn_fwd[fp32,d=128,split=False]",
    "prefusion_attn_fwd[fp32,d=96,split=True]",
    "prefusion_attn_combine[fp16,d=128]",
    "prefusion_attn_bwd_dkdv[bf16,d=128]",
    "prefusion_attn_bwd_dq[fp16,d=128]",
    "prefusion_attn_bwd_dq[fp32,d=64]",
]


@pytest.mark.parametrize("arch", [80, 90])
def test_aot_compile_no_spills(arch: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(arch), *NAMES], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(r["name"] for r in rows) == sorted(NAMES)
    for r in rows:
        assert r["fits"] and r["spill_stores"] == 0 and r["spill_loads"] == 0, r
