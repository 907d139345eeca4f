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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_checkpoint(name)``: a tiny checkpoint folder (:func:`make_tiny_checkpoint`, seed 0),
    written once per name and session."""
    from llava_mini.tiny_checkpoint import make_tiny_checkpoint

    made: dict[str, Path] = {}

    def get(name: str = "tiny") -> Path:
        if name not in made:
            made[name] = make_tiny_checkpoint(tmp_path_factory.mktemp(f"ckpt-{name}"), name)
        return made[name]

    return get
