"""compress's contract on non-finite data, every backend and both fused algorithms against the
float64 oracle (property-based: hypothesis draws the image, the token and the value poisoned).

The contract (compress's docstring): every query sees every token of its image, so a NaN or
inf anywhere in an image's features makes that image's output NaN (LayerNorm of an inf token
is NaN), and other images of the batch are untouched; a NaN in a parameter reaches every
output. No backend may turn a NaN into zeros or a finite-looking row.
"""

from __future__ import annotations

import pytest
import torch
from compress_helpers import make_params, oracle, run
from hypothesis import given
from hypothesis import strategies as st
from utils import assert_close, randn

ROUTES = [("reference", "auto"), ("cpu", "folded"), ("cpu", "projected"), ("triton", "folded"), ("cuda", "folded")]
PARAMS = ("query", "in_proj_weight", "in_proj_bias", "ln_kv_weight", "ln_q_bias", "out_proj_weight", "pos_k")


def _check(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.equal(out.isnan().any(-1), ref.isnan().any(-1)), "NaN rows differ from the oracle"
    for b in range(ref.shape[0]):
        if not ref[b].isnan().any():
            assert_close(out[b], ref[b], dtype=out.dtype)


@pytest.mark.parametrize(("backend", "algorithm"), ROUTES)
@given(
    image=st.integers(0, 2),
    token=st.integers(0, 8),
    channel=st.integers(0, 15),
    value=st.sampled_from((float("nan"), float("inf"), float("-inf"))),
)
def test_poisoned_token_poisons_only_its_image(backend, algorithm, image, token, channel, value):
    p = make_params(16, 2, 2, 3)
    x = randn(3, 9, 16, scale=2.0)
    x[image, token, channel] = value
    ref = oracle(x, p, 2)[0]
    assert ref[image].isnan().all() and not ref[[i for i in range(3) if i != image]].isnan().any()
    _check(run(x, p, 2, backend, algorithm=algorithm)[0], ref)


@pytest.mark.parametrize(("backend", "algorithm"), ROUTES)
@pytest.mark.parametrize("name", PARAMS)
def test_nan_in_a_parameter_is_never_hidden(backend, algorithm, name):
    p = make_params(16, 2, 2, 3)
    p[name] = p[name].clone()
    p[name].view(-1)[3] = float("nan")
    x = randn(2, 9, 16, scale=2.0)
    ref = oracle(x, p, 2)[0]
    assert ref.isnan().any()
    _check(run(x, p, 2, backend, algorithm=algorithm)[0], ref)
