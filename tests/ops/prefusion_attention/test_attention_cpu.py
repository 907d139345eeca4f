"""prefusion_attention on the C++/OpenMP backend, and the op's argument checks."""

from __future__ import annotations

import pytest
import torch
from prefusion_cases import check_against_reference, make_inputs
from utils import assert_close, non_contiguous, randn, skip_unless_isa

import lmini_kernels
from lmini_kernels import NotSupportedError
from lmini_kernels.ops.prefusion_attention.reference import prefusion_attention_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 80, 96, 128])
def test_head_dims_gqa_padding(dtype: torch.dtype, d: int) -> None:
    q, k, v, mask = make_inputs(2, 13, 77, 8, 2, d, dtype)
    check_against_reference("cpu", q, k, v, mask)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("lq", "lk"), [(1, 1), (1, 130), (5, 5), (37, 37), (3, 200), (70, 133)])
def test_odd_lengths(lq: int, lk: int, causal: bool) -> None:
    q, k, v, mask = make_inputs(3, lq, lk, 4, 4, 64, pad=lk > 1)
    check_against_reference("cpu", q, k, v, mask, causal=causal)


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
@pytest.mark.parametrize("d", [24, 80])
def test_every_isa_path(monkeypatch: pytest.MonkeyPatch, isa: str, d: int) -> None:
    """LMINI_CPU_ISA caps the vector ISA, so the SSE, AVX2 and AVX-512 copies all run here
    (each skipped, saying so, on a CPU that cannot run it). d = 24 takes the
    scalar tail of the P V loop."""
    skip_unless_isa(isa)
    monkeypatch.setenv("LMINI_CPU_ISA", isa)
    q, k, v, mask = make_inputs(2, 21, 90, 6, 3, d)
    check_against_reference("cpu", q, k, v, mask)


def test_group_wider_than_task() -> None:
    """32 query heads over one KV head: one task's rows are all heads of one query."""
    q, k, v, mask = make_inputs(1, 3, 70, 32, 1, 64)
    check_against_reference("cpu", q, k, v, mask)


def test_large_logits_and_scale() -> None:
    q, k, v, mask = make_inputs(2, 9, 65, 4, 2, 64, scale=6.0)
    check_against_reference("cpu", q, k, v, mask, softmax_scale=0.3)


def test_all_keys_masked_gives_zeros_not_nan() -> None:
    q, k, v, _ = make_inputs(2, 4, 10, 2, 1, 64, pad=False)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 3] = False
    out = lmini_kernels.prefusion_attention(q, k, v, key_padding_mask=mask, backend="cpu")
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    ref = prefusion_attention_reference(q.double(), k.double(), v.double(), True, mask)
    assert_close(out, ref, dtype=torch.float32)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_non_contiguous_inputs(dim: int) -> None:
    q, k, v, mask = make_inputs(2, 11, 40, 4, 2, 64)
    q, k, v = non_contiguous(q, dim), non_contiguous(k, dim), non_contiguous(v, dim)
    check_against_reference("cpu", q, k, v, mask)
    # a head dimension with a gap is copied once
    check_against_reference("cpu", non_contiguous(q.contiguous(), 3), k, v, mask)


def test_flash_layout_transposed_views() -> None:
    """(B, H, L, d) tensors viewed as (B, L, H, d), as a model with head-major caches passes them."""
    q, k, v, mask = make_inputs(2, 9, 31, 4, 2, 64)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    check_against_reference("cpu", qt, kt, vt, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_matches_reference(dtype: torch.dtype) -> None:
    q, k, v, mask = make_inputs(2, 6, 19, 4, 2, 64, dtype)
    g = randn(*q.shape, dtype=dtype)
    grads = []
    for backend in ("cpu", "reference"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = lmini_kernels.prefusion_attention(*leaves, key_padding_mask=mask, backend=backend)
        out.backward(g)
        grads.append([t.grad for t in leaves])
    for got, want in zip(grads[0], grads[1], strict=True):
        assert_close(got, want.double(), dtype=dtype)


def test_gradcheck_float64_reference_route() -> None:
    """The reference backward is itself right (float64 finite differences)."""
    q, k, v, mask = make_inputs(1, 3, 7, 2, 1, 8, torch.float64)
    leaves = tuple(t.requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b, c: lmini_kernels.prefusion_attention(a, b, c, key_padding_mask=mask, backend="reference"),
        leaves,
    )


def test_opcheck() -> None:
    q, k, v, mask = make_inputs(2, 5, 12, 4, 2, 64)
    for t in (q, k, v):
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.lmini.prefusion_attention.default, (q, k, v, True, mask, 0.125))
    torch.library.opcheck(torch.ops.lmini.prefusion_attention.default, (q, k, v, False, None, 0.125))


def test_flop_formula_on_meta() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    q = torch.empty(2, 44, 32, 128, device="meta")
    k = torch.empty(2, 620, 8, 128, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = torch.ops.lmini.prefusion_attention(q, k, k, True, None, 0.1)
    assert out.shape == q.shape and out.device.type == "meta"
    assert counter.get_total_flops() == 4 * 2 * 32 * 44 * 620 * 128


def test_auto_picks_cpu_for_cpu_tensors() -> None:
    q, k, v, mask = make_inputs(1, 3, 8, 2, 2, 64)
    reg = lmini_kernels.dispatch.REGISTRIES["prefusion_attention"]
    assert reg.select("auto", {"q": q, "k": k, "v": v}, head_dim=64).name == "cpu"
    assert "cpu" in lmini_kernels.available_backends("prefusion_attention")


# --------------------------------------------------------------------- argument checks
def _qkv(d: int = 16):
    return randn(1, 3, 2, d), randn(1, 5, 1, d), randn(1, 5, 1, d)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda q, k, v: (q[0], k, v), "q"),
        (lambda q, k, v: (q, k[0], v), "k"),
        (lambda q, k, v: (q, k, v[..., :8]), "k and v"),
        (lambda q, k, v: (q, k[..., :8], v[..., :8]), "k"),
        (lambda q, k, v: (randn(1, 6, 2, 16), k, v), "q"),
        (lambda q, k, v: (randn(1, 3, 3, 16), randn(1, 5, 2, 16), randn(1, 5, 2, 16)), "heads"),
        (lambda q, k, v: (q.half(), k, v), "k"),
        (lambda q, k, v: ("q", k, v), "q"),
    ],
)
def test_bad_inputs_name_the_argument(change, name: str) -> None:
    q, k, v = change(*_qkv())
    with pytest.raises((ValueError, TypeError), match=name):
        lmini_kernels.prefusion_attention(q, k, v)


def test_bad_mask_names_the_argument() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="key_padding_mask"):
        lmini_kernels.prefusion_attention(q, k, v, key_padding_mask=torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask"):
        lmini_kernels.prefusion_attention(q, k, v, key_padding_mask=torch.zeros(1, 5))
    with pytest.raises(TypeError, match="key_padding_mask"):
        lmini_kernels.prefusion_attention(q, k, v, key_padding_mask=torch.zeros(1, 5, dtype=torch.int64))


def test_unsupported_backend_explains() -> None:
    q, k, v = randn(1, 2, 1, 300), randn(1, 2, 1, 300), randn(1, 2, 1, 300)
    with pytest.raises(NotSupportedError, match="head dim 300"):
        lmini_kernels.prefusion_attention(q, k, v, backend="cpu")
    out = lmini_kernels.prefusion_attention(q, k, v)  # auto falls back to the reference
    assert_close(out, prefusion_attention_reference(q.double(), k.double(), v.double()), dtype=torch.float32)
    with pytest.raises(NotSupportedError, match="unknown backend"):
        lmini_kernels.prefusion_attention(*_qkv(), backend="nope")
