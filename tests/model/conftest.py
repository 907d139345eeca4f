"""Shared fixtures of the reference-model tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

try:  # the package is installed by `pip install -e .`; fall back to the source tree
    import llava_mini  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the repo was installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))


# build and make_ids live in model_helpers.py (a unique module name, so that processes spawned
# by a test can import them too); re-exported here for the tests that import them from conftest.
from model_helpers import build, make_ids  # noqa: E402, F401


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh generator with a random seed each run (the seed is printed on failure)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    print(f"generator seed: {seed}")
    return torch.Generator().manual_seed(seed)
