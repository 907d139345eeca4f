"""pytest-benchmark over the same cases and providers as ``lmini bench`` (the suites in
python/lmini_tools/bench/ define them once; here each (case, provider) becomes one benchmark).

    pytest benchmarks/ --benchmark-only --benchmark-json=out.json
    pytest benchmarks/ --benchmark-only --benchmark-compare      # against the last saved run

Shapes: the suite's defaults, or ``LMINI_BENCH_SHAPE`` (e.g. ``batch=2,grid=4,dim=64,heads=4``:
the smoke run CI makes). Device: ``LMINI_BENCH_DEVICE`` (default cuda when present, else cpu).
Kept out of the default test run (pyproject's testpaths is tests/).
"""

from __future__ import annotations

import os
import types

import torch

from lmini_tools.bench.harness import BenchContext


class CollectingContext(BenchContext):
    """A BenchContext that records each (case, provider, callable) instead of timing it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.collected: list[tuple[str, str, object]] = []

    def measure(self, case, provider, fn, **_):
        if self.wants(provider):
            self.collected.append((case, provider, fn))
        return None


def shape_options() -> types.SimpleNamespace:
    opts = {}
    for item in filter(None, os.environ.get("LMINI_BENCH_SHAPE", "").split(",")):
        key, value = item.split("=")
        opts[key.strip().replace("-", "_")] = int(value)
    return types.SimpleNamespace(goals=False, **opts)


def collect(suite_run, suite: str) -> list[tuple[str, str, object]]:
    device = os.environ.get("LMINI_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    ctx = CollectingContext(suite, device, quick=True, verbose=False, options=shape_options())
    suite_run(ctx)
    return ctx.collected
