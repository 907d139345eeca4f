"""torch.compile(fullgraph=True) traces every public op and module with backend="auto", with
static and dynamic shapes: zero graph breaks (fullgraph raises on one), and the same answer as
eager."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.utils import counters
from utils import assert_close, randn

import lmini_kernels as lk
from lmini_kernels.modules.prefusion import FusedPreFusion


def _prefusion_module() -> FusedPreFusion:
    torch.manual_seed(0)
    m = FusedPreFusion(32, 4, 2, 48, 2, 1e-5, 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8)))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 else 0.0))
    return m.eval()


CASES = {
    "row_softmax": lambda: (lambda x: lk.row_softmax(x, 0.7), (randn(3, 37),)),
    "prefusion_attention": lambda: (
        lambda q, k: lk.prefusion_attention(q, k, k, causal=True),
        (randn(2, 5, 4, 16), randn(2, 11, 2, 16)),
    ),
    "FusedResampler": lambda: (lk.FusedResampler(1, 64, 8).eval(), (randn(2, 25, 64),)),
    "FusedPreFusion": lambda: (_prefusion_module(), (randn(1, 9, 32), randn(1, 1, 32), randn(1, 4, 32))),
}


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fullgraph_no_graph_breaks(name, dynamic):
    fn, args = CASES[name]()
    dynamo.reset()
    counters.clear()
    with torch.no_grad():
        want = fn(*args)
        got = torch.compile(fn, fullgraph=True, dynamic=dynamic, backend="eager")(*args)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    for w, g in zip(want, got, strict=True):
        if w is not None:
            assert_close(g, w, dtype=torch.float32)
