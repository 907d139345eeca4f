"""compress on the reference and cpu backends, both algorithms, against a float64 oracle."""

from __future__ import annotations

import pytest
import torch
from compress_helpers import (
    OfficialResampler,
    check_core,
    check_eps_numbers,
    check_folded,
    core_case,
    make_params,
    oracle,
    run,
    weights_of,
)
from utils import TOLERANCE, assert_close, non_contiguous, randn, skip_unless_isa

import lmini_kernels as lk
from lmini_kernels.ops.compress.api import choose_algorithm
from lmini_kernels.ops.compress.core import core_cpp, core_torch_op

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("batch", "grid", "c", "heads", "dh"),
    [(3, 5, 1, 8, 9), (2, 13, 2, 1, 12), (4, 1, 1, 3, 4), (2, 5, 3, 2, 8), (1, 37, 1, 4, 4), (2, 5, 2, 16, 4)],
)
def test_cpu_folded_matches_float64(batch, grid, c, heads, dh, dtype):
    w = check_folded("cpu", batch, grid, c, heads, dh, dtype)
    torch.testing.assert_close(w.double().sum(-1), torch.ones(batch, c * c, dtype=torch.float64), atol=1e-2, rtol=0)


def test_cpu_real_shape_fp32_and_noncontiguous_batch():
    """LLaVA-Mini's shape (N = 24*24, D = 1024, 8 heads, C = 1), batch strides not contiguous."""
    p = make_params(1024, 8, 1, 24)
    x = non_contiguous(randn(3, 576, 1024) * 3 + 1, dim=0)
    out, _ = run(x, p, 8, "cpu")
    assert_close(out, oracle(x, p, 8)[0])


def test_cpu_hd_shape_c8():
    """HD: N = 48*48, C = 8 (64 queries); auto picks folded (8 * 64 < 1024)."""
    p = make_params(1024, 8, 8, 48)
    x = randn(1, 2304, 1024)
    assert choose_algorithm("auto", 64, 8, 1024) == "folded"
    assert choose_algorithm("auto", 64, 8, 1024, "cuda") == "projected"  # tensor cores beat CUDA-core FMAs
    assert choose_algorithm("auto", 1, 8, 1024, "cuda") == "folded"
    out, w = run(x, p, 8, "cpu", need_weights=True)
    ref, ref_w = oracle(x, p, 8, need_weights=True)
    assert_close(out, ref)
    assert_close(w, ref_w)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
def test_projected_algorithm(dtype):
    heads, dh, c, grid = 4, 4, 3, 5  # heads * C*C = 36 >= D = 16: auto picks projected
    p = make_params(heads * dh, heads, c, grid, dtype)
    assert choose_algorithm("auto", c * c, heads, heads * dh) == "projected"
    x = non_contiguous(randn(3, grid * grid, heads * dh, dtype=dtype), dim=1)
    ref, ref_w = oracle(x, p, heads, need_weights=True)
    for algorithm in ("auto", "projected", "folded"):
        out, w = run(x, p, heads, "cpu", algorithm=algorithm, need_weights=True)
        assert_close(out, ref, factor=2.0 if dtype == torch.float16 else 1.0)
        assert_close(w, ref_w, factor=2.0 if dtype == torch.float16 else 1.0)


@pytest.mark.parametrize("backend", ("reference", "cpu"))
def test_kv_proj(backend):
    p = make_params(24, 3, 2, 5, kv_dim=40)
    x = randn(2, 25, 40)
    out, _ = run(x, p, 3, backend)
    assert_close(out, oracle(x, p, 3)[0])


@pytest.mark.parametrize(
    ("dim", "heads", "c", "grid", "kv_dim"), [(24, 3, 2, 5, None), (16, 2, 1, 7, 12), (32, 8, 3, 4, 40)]
)
def test_reference_matches_the_official_module(dim, heads, c, grid, kv_dim):
    """The oracle itself, against an independent one: the official module layout
    (nn.MultiheadAttention, sequence-first) in float64 with the same parameters and epsilons."""
    p = make_params(dim, heads, c, grid, torch.float64, kv_dim=kv_dim)
    m = OfficialResampler(c, dim, heads, kv_dim).double()
    with torch.no_grad():
        m.query.copy_(p["query"]), m.pos_embed.copy_(p["pos_q"])
        m.ln_q.weight.copy_(p["ln_q_weight"]), m.ln_q.bias.copy_(p["ln_q_bias"])
        m.ln_kv.weight.copy_(p["ln_kv_weight"]), m.ln_kv.bias.copy_(p["ln_kv_bias"])
        m.attn.in_proj_weight.copy_(p["in_proj_weight"]), m.attn.in_proj_bias.copy_(p["in_proj_bias"])
        m.attn.out_proj.weight.copy_(p["out_proj_weight"]), m.attn.out_proj.bias.copy_(p["out_proj_bias"])
        if kv_dim is not None:
            m.kv_proj.weight.copy_(p["kv_proj_weight"])
    m.ln_q.eps, m.ln_kv.eps = 1e-6, 1e-3
    x = randn(3, grid * grid, kv_dim or dim, dtype=torch.float64, scale=0.5)
    with torch.no_grad():
        want, want_w = m(x)
    out, w = run(x, p, heads, "reference", eps=dict(ln_q_eps=1e-6, ln_kv_eps=1e-3), need_weights=True)
    assert_close(out, want, dtype=torch.float64)
    assert_close(w, want_w, dtype=torch.float64)


def test_reference_float64_is_exact():
    p = make_params(20, 2, 2, 5, torch.float64)
    x = randn(2, 25, 20, dtype=torch.float64)
    out, _ = run(x, p, 2, "auto")
    assert_close(out, oracle(x, p, 2)[0], dtype=torch.float64)


@pytest.mark.parametrize("splits", (1, 2, 5))
def test_core_splits_are_merged(splits):
    """The token-chunk split and its online-softmax merge (forced, any split count)."""
    x = randn(3, 49, 40, dtype=torch.float64)
    a, pp = randn(5, 40, dtype=torch.float64) * 0.5, randn(5, 49, dtype=torch.float64)
    acc_ref, lse_ref = core_torch_op(x, a, pp, 1e-5)
    acc, lse = core_cpp(x.float(), a.float(), pp.float(), 1e-5, splits)
    assert_close(acc, acc_ref, dtype=torch.float32)
    assert_close(lse, lse_ref, dtype=torch.float32)


def test_gradcheck_reference_float64():
    heads, dh, c, grid = 2, 4, 2, 3
    p = make_params(heads * dh, heads, c, grid, torch.float64, kv_dim=6)
    x = randn(2, grid * grid, 6, dtype=torch.float64)
    names = ("query", "ln_q_weight", "ln_q_bias", "ln_kv_weight", "ln_kv_bias", "in_proj_weight", "in_proj_bias",
             "out_proj_weight", "out_proj_bias", "kv_proj_weight")  # fmt: skip

    def f(x, *vals):
        q = dict(p, **dict(zip(names, vals, strict=True)))
        return run(x, q, heads, "reference")[0]

    inputs = [x.requires_grad_()] + [p[n].clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(f, inputs)


def test_gradcheck_folded_core_float64():
    """The analytic backward shared by every backend of the core, against finite differences."""
    x = randn(2, 9, 6, dtype=torch.float64).requires_grad_()
    a = (randn(4, 6, dtype=torch.float64) * 0.7).requires_grad_()
    pp = randn(4, 9, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a, p: core_torch_op(x, a, p, 1e-5), (x, a, pp))


@pytest.mark.parametrize("with_kv", (False, True))
def test_cpu_backward_matches_reference(with_kv):
    """Gradients for x, query, both LayerNorms and all projections through the C++ op."""
    heads, dh, c, grid = 3, 8, 2, 5
    p = make_params(heads * dh, heads, c, grid, kv_dim=20 if with_kv else None)
    x = randn(3, grid * grid, 20 if with_kv else heads * dh)
    g = randn(3, c * c, heads * dh)
    names = [n for n in p if n not in ("pos_q", "pos_k")]

    def grads(backend, dtype):
        q = {n: v.to(dtype).requires_grad_(n in names) for n, v in p.items()}
        xx = x.to(dtype).requires_grad_()
        out, _ = run(xx, q, heads, backend)
        (out * g.to(dtype)).sum().backward()
        return [xx.grad] + [q[n].grad for n in names]

    ref = grads("reference", torch.float64)
    got = grads("cpu", torch.float32)
    for name, gr, gc in zip(["x"] + names, ref, got, strict=True):
        assert gc is not None, name
        assert_close(gc, gr, dtype=torch.float32, factor=10.0)


def test_opcheck_core_ops():
    x = randn(2, 9, 12)
    a, pp = randn(6, 12) * 0.5, randn(6, 9)
    torch.library.opcheck(torch.ops.lmini.compress_folded.default, (x, a, pp, 1e-5, 0))
    torch.library.opcheck(core_torch_op, (x, a, pp, 1e-5))


@pytest.mark.parametrize("path", ("tile", "gemm"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", (True, False))
@pytest.mark.parametrize("splits", (0, 1, 2, 3))
def test_core_pidx_lengths_normalize(monkeypatch, path, dtype, normalize, splits):
    """pidx (random columns with repeats), lengths (0, 1, N and between), normalize on and off,
    on both CPU paths (LMINI_COMPRESS_CPU_PATH forces one): N not a multiple of the 16-token
    tile, K not a multiple of 4, D odd; unseen tokens poisoned with NaN/inf change nothing."""
    monkeypatch.setenv("LMINI_COMPRESS_CPU_PATH", path)
    n = 37
    check_core(core_cpp, core_case(6, n, 29, 7, cols=11, seen=[0, 1, n, 20, 17, 36]), dtype, normalize, splits)


@pytest.mark.parametrize("path", ("tile", "gemm"))
@pytest.mark.parametrize(("cols", "seen"), [(None, [5, 0, 49]), (9, None), (None, None)])
def test_core_pidx_or_lengths_alone(monkeypatch, path, cols, seen):
    monkeypatch.setenv("LMINI_COMPRESS_CPU_PATH", path)
    check_core(core_cpp, core_case(3, 49, 40, 5, cols=cols, seen=seen), torch.bfloat16, True, 2)


@pytest.mark.parametrize(("k", "normalize"), [(70, False), (130, True)])
def test_core_many_rows_default_route(k, normalize):
    """K >= 64 takes the GEMM path by default (K = 70, 130: not multiples of 4 or 64)."""
    check_core(core_cpp, core_case(3, 45, 33, k, cols=20, seen=[45, 0, 7]), torch.float32, normalize, 0)


@pytest.mark.parametrize("path", ("tile", "gemm"))
@pytest.mark.parametrize(
    ("over", "words"),
    [
        (dict(pidx=torch.tensor([[0, 11, 2]], dtype=torch.int32)), ("pidx[0, 1] = 11", "[0, T = 11)")),
        (dict(pidx=torch.tensor([[0, -1, 2]], dtype=torch.int32)), ("pidx[0, 1] = -1",)),
        (dict(pidx=torch.zeros(1, 3, dtype=torch.int64)), ("pidx must be an int32",)),
        (dict(pidx=torch.zeros(1, 4, dtype=torch.int32)), ("pidx must be an int32", "(1, 3)")),
        (dict(lengths=torch.tensor([4], dtype=torch.int32)), ("lengths[0] = 4", "[0, N = 3]")),
        (dict(lengths=torch.tensor([-1], dtype=torch.int32)), ("lengths[0] = -1",)),
        (dict(lengths=torch.tensor([1, 1], dtype=torch.int32)), ("lengths must be an int32", "(1,)")),
        (dict(pidx=None), ("p must be float32 (K, N) = (2, 3)",)),
    ],
)
def test_core_bad_pidx_lengths_are_named(monkeypatch, path, over, words):
    monkeypatch.setenv("LMINI_COMPRESS_CPU_PATH", path)
    args = dict(pidx=torch.tensor([[0, 1, 10]], dtype=torch.int32), lengths=None)
    args.update(over)
    with pytest.raises(RuntimeError) as info:
        core_cpp(randn(1, 3, 8), randn(2, 8), randn(2, 11), 1e-5, 0, args["pidx"], args["lengths"])
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_core_pidx_of_unseen_tokens_is_not_checked():
    """Only seen tokens' pidx entries are used, so only those are checked."""
    pidx = torch.tensor([[0, 1, 99]], dtype=torch.int32)
    core_cpp(randn(1, 3, 8), randn(2, 8), randn(2, 4), 1e-5, 0, pidx, torch.tensor([2], dtype=torch.int32))


@pytest.mark.parametrize("path", ("tile", "gemm"))
def test_opcheck_core_new_arguments(monkeypatch, path):
    monkeypatch.setenv("LMINI_COMPRESS_CPU_PATH", path)
    x, a, pp, pidx, lengths = core_case(3, 21, 12, 6, cols=5, seen=[21, 0, 9])
    x, a, pp = x.float().requires_grad_(), a.float().requires_grad_(), pp.float().requires_grad_()
    for normalize in (True, False):
        args = (x, a, pp, 1e-5, 2, pidx, lengths, normalize)
        torch.library.opcheck(torch.ops.lmini.compress_folded.default, args)


def test_tolerances_are_the_issue_bounds():
    assert TOLERANCE[torch.float32] == 1e-5 and TOLERANCE[torch.float16] == 2e-3 and TOLERANCE[torch.bfloat16] == 1e-2


def _bad_call(**over):
    p = make_params(16, 4, 2, 3)
    x = randn(2, 9, 16)
    kw = dict(x=x, heads=4, backend="auto")
    kw.update({k: v for k, v in over.items() if k in ("x", "heads", "backend", "algorithm")})
    p.update({k: v for k, v in over.items() if k in p or k == "kv_proj_weight"})
    extra = {"algorithm": kw["algorithm"]} if "algorithm" in kw else {}
    return lk.compress(kw["x"], weights_of(p, kw["heads"]), backend=kw["backend"], **extra)


@pytest.mark.parametrize(
    ("over", "words"),
    [
        (dict(x=randn(2, 10, 16)), ("pos_k", "(10, 16)")),  # any N, but the key table must match
        (dict(x=randn(9, 16)), ("x", "3 dimensions")),
        (dict(heads=5), ("num_heads",)),
        (dict(heads=0), ("num_heads", ">= 1")),
        (dict(query=randn(3, 16)), ("pos_q", "(3, 16)")),  # any Q, but the query table must match
        (dict(query=randn(0, 16)), ("query", "at least one")),
        (dict(in_proj_weight=randn(48, 15)), ("in_proj_weight", "(48, 16)")),
        (dict(out_proj_bias=randn(15)), ("out_proj_bias", "(16)")),
        (dict(ln_kv_weight=randn(16, dtype=torch.float64)), ("ln_kv_weight", "dtype")),
        (dict(pos_k=randn(8, 16)), ("pos_k", "(9, 16)")),
        (dict(x=randn(2, 9, 20)), ("x.shape[2]", "kv_proj_weight")),
        (dict(kv_proj_weight=randn(16, 12)), ("kv_proj_weight", "(16, 16)")),
        (dict(algorithm="fast"), ("algorithm",)),
        (dict(backend="nope"), ("unknown backend",)),
        (dict(x=randn(2, 9, 16, dtype=torch.float64), backend="cpu"), ("x", "float64")),
    ],
)
def test_errors_name_the_argument(over, words):
    with pytest.raises((ValueError, TypeError)) as info:
        _bad_call(**over)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_device_mismatch_is_named():
    p = make_params(16, 4, 1, 3)
    p["query"] = p["query"].to("meta")
    with pytest.raises(ValueError, match="query is on meta"):
        run(randn(2, 9, 16), p, 4, "auto")


def test_many_images_one_call():
    """B > 10,000 images in one call (tiny images so the float64 oracle stays cheap)."""
    p = make_params(12, 3, 1, 2)
    x = randn(10_007, 4, 12)
    out, _ = run(x, p, 3, "cpu")
    assert_close(out, oracle(x, p, 3)[0])


@pytest.mark.parametrize("algorithm", ("auto", "folded"))
def test_sixteen_by_sixteen_queries(algorithm):
    """C = 16 (256 queries, Qwen-VL-style): auto takes the projected path; folded stays exact."""
    p = make_params(32, 2, 16, 3)
    x = randn(2, 9, 32)
    out, w = run(x, p, 2, "cpu", algorithm=algorithm, need_weights=True)
    ref, ref_w = oracle(x, p, 2, need_weights=True)
    assert_close(out, ref)
    assert_close(w, ref_w)


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
@pytest.mark.parametrize(("dim", "k_rows"), [(1024, 8), (27, 9), (40, 12)])
def test_every_isa_path(monkeypatch, isa, dim, k_rows):
    """LMINI_CPU_ISA caps the vector ISA, so the SSE, AVX2 and AVX-512 copies of the streaming
    tile all run here (each skipped, saying so, on a CPU that cannot run it). Odd D takes
    the zero-padded columns; K = 9, 12 the zero-padded rows."""
    skip_unless_isa(isa)
    monkeypatch.setenv("LMINI_CPU_ISA", isa)
    x = randn(3, 37, dim, dtype=torch.float64, scale=2.0) + 0.5
    a = randn(k_rows, dim, dtype=torch.float64) * 0.3
    pp = randn(k_rows, 37, dtype=torch.float64)
    acc_ref, lse_ref = core_torch_op(x, a, pp, 1e-5)
    acc, lse = core_cpp(x.float(), a.float(), pp.float(), 1e-5, 1)
    assert_close(acc, acc_ref, dtype=torch.float32)
    assert_close(lse, lse_ref, dtype=torch.float32)


@pytest.mark.parametrize(("backend", "algorithm"), [("reference", "auto"), ("cpu", "folded"), ("cpu", "projected")])
def test_layernorm_eps_reaches_the_numbers(backend, algorithm):
    check_eps_numbers(backend, algorithm=algorithm)


@pytest.mark.parametrize(("src", "tgt"), [(1, 24), (2, 5), (3, 13), (8, 48), (24, 13), (9, 2), (5, 1)])
def test_key_positions_match_torch_bicubic(src, tgt):
    """compress_positions' separable matmul form against F.interpolate's bicubic resize (the
    official get_abs_pos), up- and downsampling, on a random table."""
    import torch.nn.functional as F

    pe = randn(src * src, 40)
    grid = pe.reshape(1, src, src, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False)
    want = want.permute(0, 2, 3, 1).reshape(tgt * tgt, -1)
    assert_close(lk.compress_positions(pe, tgt * tgt), want, dtype=torch.float32)
