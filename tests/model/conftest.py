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

from llava_mini import IMAGE_TOKEN_INDEX, LlavaMini, LlavaMiniConfig  # noqa: E402


def build(name: str, seed: int = 0, backend: str = "reference") -> LlavaMini:
    """A tiny model with deterministic random weights, in eval mode."""
    return LlavaMini(LlavaMiniConfig.from_name(name), backend=backend).init_random_weights(seed).eval()


def make_ids(
    gen: torch.Generator, batch: int, length: int, vocab: int, image_at: int | None = 2, pad_tail: int = 0
) -> torch.Tensor:
    """Random prompt ids in [1, vocab) with the image placeholder at ``image_at`` and, in the
    last sample, ``pad_tail`` trailing pad ids (0)."""
    ids = torch.randint(1, vocab, (batch, length), generator=gen)
    if image_at is not None:
        ids[:, image_at] = IMAGE_TOKEN_INDEX
    if pad_tail:
        ids[-1, length - pad_tail :] = 0
    return ids


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
