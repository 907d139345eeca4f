"""``lmini bench compress`` as pytest-benchmark tests: one per (case, provider) of the suite."""

from __future__ import annotations

import pytest
import torch
from conftest import collect

from lmini_tools.bench.compress import run

CASES = collect(run, "compress")


@pytest.mark.parametrize(("case", "provider", "fn"), CASES, ids=[f"{c}|{p}" for c, p, _ in CASES])
def test_compress(benchmark, case, provider, fn):
    benchmark.group = case
    with torch.no_grad():
        out = benchmark(fn)
    first = out[0] if isinstance(out, (tuple, list)) else out
    assert torch.isfinite(first[0] if isinstance(first, (tuple, list)) else first).all()
