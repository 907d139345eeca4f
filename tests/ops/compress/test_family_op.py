"""The generalised compress op (the query-resampler family: LLaVA-Mini, Qwen-VL, MiniCPM-V)
against an independent float64 oracle: torch's own ``F.multi_head_attention_forward`` run
image by image on the seen tokens only, with the members' pre- and post-processing written
out from their formulas. Every backend, every algorithm, odd and ragged shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from utils import assert_close, randn

import lmini_kernels as lk
from lmini_kernels.ops.compress.api import algorithm_costs, choose_algorithm

BACKENDS = ("reference", "cpu", "triton", "cuda")


def member_params(dim, heads, nq, kv_dim=None, *, pos_q=True, post=None, dtype=torch.float32, eps=(1e-6, 1e-6)):
    def r(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)

    p = dict(
        query=r(nq, dim), pos_q=r(nq, dim, scale=0.5) if pos_q else None,
        ln_q_weight=1 + r(dim, scale=0.3), ln_q_bias=r(dim, scale=0.3),
        ln_kv_weight=1 + r(dim, scale=0.3), ln_kv_bias=r(dim, scale=0.3),
        in_proj_weight=r(3 * dim, dim, scale=dim**-0.5), in_proj_bias=r(3 * dim, scale=0.3),
        out_proj_weight=r(dim, dim, scale=dim**-0.5), out_proj_bias=r(dim, scale=0.3),
        num_heads=heads, ln_q_eps=eps[0], ln_kv_eps=eps[1],
    )  # fmt: skip
    if kv_dim is not None:
        p["kv_proj_weight"] = r(dim, kv_dim, scale=kv_dim**-0.5)
    if post is not None:
        p.update(ln_post_weight=1 + r(dim, scale=0.3), ln_post_bias=r(dim, scale=0.3), ln_post_eps=1e-6,
                 proj=r(dim, post, scale=dim**-0.5))  # fmt: skip
    return p


def oracle(x, p, pos_rows, seen):
    """float64, image by image: pos_rows (B, N, D) the key position of every token, seen (B, N)."""
    d = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in p.items()}
    x = x.double()
    dim = d["query"].shape[1]
    outs = []
    for b in range(x.shape[0]):
        xs = x[b][seen[b]]
        if d.get("kv_proj_weight") is not None:
            xs = xs @ d["kv_proj_weight"].t()
        xs = F.layer_norm(xs, (dim,), d["ln_kv_weight"], d["ln_kv_bias"], d["ln_kv_eps"])
        q = F.layer_norm(d["query"], (dim,), d["ln_q_weight"], d["ln_q_bias"], d["ln_q_eps"])
        if d["pos_q"] is not None:
            q = q + d["pos_q"]
        keys = xs + pos_rows[b][seen[b]].double()
        out, attn = F.multi_head_attention_forward(
            q.unsqueeze(1), keys.unsqueeze(1), xs.unsqueeze(1), dim, d["num_heads"], d["in_proj_weight"],
            d["in_proj_bias"], None, None, False, 0.0, d["out_proj_weight"], d["out_proj_bias"], training=False,
            need_weights=True,
        )  # fmt: skip
        out = out.squeeze(1)
        if d.get("proj") is not None:
            out = F.layer_norm(out, (dim,), d["ln_post_weight"], d["ln_post_bias"], d["ln_post_eps"]) @ d["proj"]
        full = torch.zeros(attn.shape[1], x.shape[1], dtype=torch.float64)
        full[:, seen[b]] = attn[0]
        outs.append((out, full))
    return torch.stack([o for o, _ in outs]), torch.stack([a for _, a in outs])


def minicpm_batch(tgt_sizes, dim, table_side=9, dtype=torch.float32, kv_dim=None, poison=True):
    """MiniCPM-V's call: ragged images padded to the longest, a (side*side, D) table indexed by
    row * side + col for the [:h, :w] slice of each image."""
    lens = [h * w for h, w in tgt_sizes]
    n = max(lens)
    x = randn(len(tgt_sizes), n, kv_dim or dim, dtype=dtype, scale=1.5) + 0.3
    mask = torch.zeros(len(tgt_sizes), n, dtype=torch.bool)
    index = torch.zeros(len(tgt_sizes), n, dtype=torch.long)
    for b, (_h, w) in enumerate(tgt_sizes):
        mask[b, lens[b] :] = True
        j = torch.arange(lens[b])
        index[b, : lens[b]] = (j // w) * table_side + j % w
        if poison and lens[b] < n:
            x[b, lens[b] :] = float("nan")  # padded rows are garbage: never read
            x[b, -1] = float("inf")
    table = lk.get_2d_sincos_pos_embed(dim, table_side).to(dtype)
    return x, mask, index, table


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ("folded", "folded_kv", "projected"))
def test_minicpmv_ragged_rectangular(backend, algorithm):
    """MiniCPM-V 2.5-style: no query positions, Q = 12 (not a square), kv_proj, ragged
    rectangular grids with a table slice per image, padded rows NaN/inf, ln_post + proj."""
    dim, heads, kv = 32, 4, 24
    p = member_params(dim, heads, 12, kv, pos_q=False, post=20)
    sizes = [(3, 5), (4, 4), (1, 1), (5, 2)]
    x, mask, index, table = minicpm_batch(sizes, dim, kv_dim=kv)
    w = lk.CompressWeights(pos_k=table, **p)
    ref, ref_attn = oracle(x, p, table[index], ~mask)
    out, attn = lk.compress(x, w, key_padding_mask=mask, pos_index=index, need_weights=True, backend=backend,
                            algorithm=algorithm)  # fmt: skip
    assert out.shape == (4, 12, 20) and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert_close(out, ref)
    assert_close(attn, ref_attn)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lengths_equal_suffix_mask_and_any_mask(backend):
    """lengths and the equivalent suffix mask give the same answer; a mask with holes (not a
    suffix) is compacted and matches the oracle too; per-image (B, N, D) key positions."""
    dim, heads, n = 16, 2, 11
    p = member_params(dim, heads, 5)
    x = randn(3, n, dim)
    pos = randn(3, n, dim, scale=0.5)
    w = lk.CompressWeights(pos_k=pos, **p)
    lengths = torch.tensor([11, 4, 1])
    seen = torch.arange(n) < lengths.view(-1, 1)
    ref, _ = oracle(x, p, pos, seen)
    a, _ = lk.compress(x, w, lengths=lengths, backend=backend)
    b, _ = lk.compress(x, w, key_padding_mask=~seen, backend=backend)
    assert_close(a, ref)
    assert_close(b, ref)
    holes = torch.rand(3, n) < 0.4
    holes[:, 0] = False
    ref_h, ref_attn = oracle(x, p, pos, ~holes)
    xh = x.clone()
    xh[holes] = float("nan")
    c, attn = lk.compress(xh, w, key_padding_mask=holes, backend=backend, need_weights=True)
    assert_close(c, ref_h)
    assert_close(attn, ref_attn)


@pytest.mark.parametrize("backend", BACKENDS)
def test_qwen_vl_shape_odd(backend):
    """Qwen-VL's scheme at odd small sizes: query positions, bicubic key table, kv_proj, no
    epilogue, eps 1e-6; every algorithm agrees with the oracle."""
    dim, heads, kv, c, g = 24, 3, 20, 3, 7
    p = member_params(dim, heads, c * c, kv)
    p["pos_q"] = lk.get_2d_sincos_pos_embed(dim, c).float()
    pos_k = lk.compress_positions(p["pos_q"], g * g)
    x = randn(2, g * g, kv, scale=2.0)
    w = lk.CompressWeights(pos_k=pos_k, **p)
    ref, _ = oracle(x, p, pos_k.expand(2, -1, -1), torch.ones(2, g * g, dtype=torch.bool))
    for algorithm in ("auto", "folded", "folded_kv", "projected"):
        out, _ = lk.compress(x, w, backend=backend, algorithm=algorithm)
        assert_close(out, ref)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_inputs_cpu(dtype):
    """fp16/bf16 features and weights: every algorithm within the half tolerance of the fp64
    oracle on the same rounded inputs; the fp32 twin is the tests above."""
    dim, heads, kv = 32, 4, 24
    p = member_params(dim, heads, 7, kv, pos_q=False, post=32, dtype=dtype)
    x, mask, index, table = minicpm_batch([(3, 3), (2, 4)], dim, dtype=dtype, kv_dim=kv)
    w = lk.CompressWeights(pos_k=table, **p)
    ref, _ = oracle(x, p, table[index], ~mask)
    for algorithm in ("folded", "folded_kv", "projected"):
        out, _ = lk.compress(x, w, key_padding_mask=mask, pos_index=index, backend="cpu", algorithm=algorithm)
        assert out.dtype == dtype
        assert_close(out, ref, factor=2.0)


def test_gradients_through_every_algorithm():
    """Training: gradients of x and of every parameter match the reference's (float64)."""
    dim, heads, kv = 16, 2, 12
    p = member_params(dim, heads, 6, kv, pos_q=False, post=8, dtype=torch.float64)
    x, mask, index, table = minicpm_batch([(2, 3), (3, 3)], dim, dtype=torch.float64, kv_dim=kv, poison=False)
    grads = {}
    for backend, algorithm in (("reference", "auto"), ("cpu", "folded"), ("cpu", "folded_kv"), ("cpu", "projected")):
        xx = x.clone().requires_grad_(True)
        pp = {k: (v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v) for k, v in p.items()}
        w = lk.CompressWeights(pos_k=table, **pp)
        be = "reference" if backend == "reference" else "auto"
        out, _ = lk.compress(xx, w, key_padding_mask=mask, pos_index=index, backend=be, algorithm=algorithm)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[algorithm if backend != "reference" else "ref"] = [xx.grad[~mask]] + [
            pp[k].grad for k in sorted(pp) if isinstance(pp[k], torch.Tensor)
        ]
    for algorithm in ("folded", "folded_kv", "projected"):
        for g, r in zip(grads[algorithm], grads["ref"], strict=True):
            assert torch.allclose(g, r, rtol=1e-7, atol=1e-9), algorithm


def test_cost_model_picks_per_member():
    """The cost model's choices at the members' real sizes (CPU), and the GPU rule."""
    assert choose_algorithm("auto", 1, 8, 1024) == "folded"  # LLaVA-Mini
    assert choose_algorithm("auto", 64, 28, 3584, kv_dim=1152) == "folded_kv"  # MiniCPM-V 2.6
    assert choose_algorithm("auto", 96, 32, 4096, kv_dim=1152) == "folded_kv"  # MiniCPM-V 2.5
    assert choose_algorithm("auto", 64, 18, 2304, kv_dim=1152) == "folded_kv"  # MiniCPM-V 2.0
    assert choose_algorithm("auto", 256, 32, 4096, kv_dim=1664) == "folded_kv"  # Qwen-VL (measured: 1.6x)
    assert choose_algorithm("auto", 256, 32, 4096) == "projected"  # the same without a kv_proj
    assert choose_algorithm("auto", 64, 28, 3584, "cuda", kv_dim=1152) == "projected"
    costs = algorithm_costs(64, 28, 3584, 1152)
    assert costs["folded_kv"] < costs["folded"] < costs["projected"]
    assert "folded_kv" not in algorithm_costs(1, 8, 1024)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(lengths=[3, 0]), ("lengths", "1 to")),
        (dict(lengths=[3]), ("lengths", "2 integers")),
        (dict(key_padding_mask=torch.ones(2, 6, dtype=torch.bool)), ("key_padding_mask", "every key")),
        (dict(key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)), ("key_padding_mask", "(2, 6)")),
        (dict(key_padding_mask=torch.zeros(2, 6)), ("key_padding_mask", "bool")),
        (dict(lengths=[6, 6], key_padding_mask=torch.zeros(2, 6, dtype=torch.bool)), ("one of them",)),
        (dict(pos_index=torch.full((2, 6), 9)), ("pos_index", "[0, 9)")),
        (dict(pos_index=torch.zeros(2, 5, dtype=torch.long)), ("pos_index", "(2, 6)")),
        (dict(algorithm="folded_kv"), ("folded_kv", "kv_proj_weight")),
    ],
)
def test_bad_family_inputs_named(kw, words):
    dim = 8
    p = member_params(dim, 2, 3)
    x = randn(2, 6, dim)
    table = randn(9, dim)
    pos = table if "pos_index" in kw else table[:6]
    with pytest.raises((ValueError, TypeError)) as info:
        lk.compress(x, lk.CompressWeights(pos_k=pos, **p), **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_kv_fold_rounding_is_stated():
    """The kv-space fold's rounding (fp32, MiniCPM-V-like widths, features with a mean offset):
    within 1e-5 relative of the fp64 oracle, the bound the docs state."""
    dim, heads, kv = 256, 4, 192
    p = member_params(dim, heads, 16, kv, pos_q=False)
    x = randn(2, 64, kv) + 3.0  # a common offset: the variance's form must not cancel
    table = randn(64, dim, scale=0.5)
    w = lk.CompressWeights(pos_k=table, **p)
    ref, _ = oracle(x, p, table.expand(2, -1, -1), torch.ones(2, 64, dtype=torch.bool))
    out, _ = lk.compress(x, w, backend="cpu", algorithm="folded_kv")
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < 1e-5, err
    assert math.isfinite(err)
