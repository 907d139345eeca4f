"""Helpers of the reference-model tests, in a module of its own name (``conftest`` is ambiguous
in a process spawned by a test: tests/conftest.py would shadow tests/model/conftest.py)."""

from __future__ import annotations

import torch

from llava_mini import IMAGE_TOKEN_INDEX, LlavaMini, LlavaMiniConfig


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
