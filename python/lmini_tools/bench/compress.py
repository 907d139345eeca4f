"""``lmini bench compress``: the compressor, official module vs ours, side by side in one run.

Providers: the official module eager (nn.MultiheadAttention, as the official code calls it),
the same under torch.compile, the official per-frame Python loop (video case), our reference
(official math, one batched call) and each fused backend of ``FusedResampler`` that runs on
the device (folded algorithm, frozen: parameter-only work cached as in inference); on CPU also the
streaming kernel alone (x -> per-row accumulators, no epilogue GEMMs), as a diagnostic.
Cases: one image (B = 1), a batch (B = 64), a video (B = 1024 frames on GPU, 256 on CPU), HD
(N = 48*48, C = 8). D = 1024, 8 heads (LLaVA-Mini); fp32 on CPU, fp16 on GPU.
Bytes = features read + compressed tokens written (weights excluded); FLOPs = the folded
algorithm's useful work (4*B*N*Q*heads*D + 4*B*Q*D^2), the same count for every provider.
"""

from __future__ import annotations

import torch

from lmini_kernels.dispatch import registry
from lmini_kernels.modules import FusedResampler
from lmini_tools.baselines import OfficialResampler
from lmini_tools.bench.harness import BenchContext
from lmini_tools.progress import steps

DIM, HEADS = 1024, 8


def _option(ctx: BenchContext, name: str, default):
    value = getattr(ctx.options, name, None)
    return default if value is None else value


def _cases(device: str, quick: bool, ctx: BenchContext | None = None) -> list[tuple[str, int, int, int]]:
    """(name, B, grid side G, C): the default cases, or the one that --batch/--grid/--queries-side ask for."""
    if ctx is not None and any(_option(ctx, n, None) is not None for n in ("batch", "grid", "queries_side")):
        b, g, c = _option(ctx, "batch", 64), _option(ctx, "grid", 24), _option(ctx, "queries_side", 1)
        return [(f"B={b} N={g * g} C={c}", b, g, c)]
    video = 1024 if device == "cuda" else 256
    hd_batch = 64 if device == "cuda" else 8
    cases = [("image B=1", 1, 24, 1), ("batch B=64", 64, 24, 1)]
    if not quick:
        cases += [(f"video B={video}", video, 24, 1), (f"HD B={hd_batch} N=2304 C=8", hd_batch, 48, 8)]
    return cases


def _fused_backends(device: str) -> list[str]:
    """Fused backends that run on this device for real (no interpreter or emulator)."""
    names = []
    for b in registry("compress").backends:
        if b.name == "reference" or b.unavailable_reason() is not None:
            continue
        if device in b.devices:
            names.append(b.name)
    return names


def _official(grid: int, device: str, dtype: torch.dtype, dim: int = DIM, heads: int = HEADS) -> OfficialResampler:
    torch.manual_seed(0)
    m = OfficialResampler(grid, dim, heads)
    with torch.no_grad():  # trained-looking parameters, never an identity or zeros
        for name, prm in m.named_parameters():
            if name != "pos_embed":
                prm.add_(torch.randn_like(prm) * (0.3 if prm.dim() == 1 else prm.shape[-1] ** -0.5))
    return m.to(device=device, dtype=dtype).eval()


def _timed(fn, x: torch.Tensor, mode: str):
    """``fn(x)`` as timed in ``mode``: "fwd" (no autograd) or "fwd+bwd" (the forward, then the
    backward of the output's sum into x and every parameter, as in training)."""
    if mode == "fwd":
        return lambda: fn(x)
    xg = x.detach().requires_grad_(True)

    def step():
        with torch.enable_grad():
            out = fn(xg)
            (out[0] if isinstance(out, tuple) else out).float().sum().backward()

    return step


def run(ctx: BenchContext) -> None:
    """Measure every provider on every case (see the module docstring)."""
    mode = getattr(ctx.options, "mode", None) or "fwd"
    device = ctx.device
    dtype = ctx.dtype_or(torch.float16 if device == "cuda" else torch.float32)
    dim, heads = _option(ctx, "dim", DIM), _option(ctx, "heads", HEADS)
    itemsize = torch.empty((), dtype=dtype).element_size()
    backends = _fused_backends(device)
    for case, batch, grid, c in steps(_cases(device, ctx.quick, ctx), "bench compress: case", label=lambda c: c[0]):
        n, q = grid * grid, c * c
        off = _official(c, device, dtype, dim, heads)
        fused = FusedResampler.from_module(off).eval().freeze()  # inference: parameter-only work cached
        x = torch.randn(batch, n, dim, device=device, dtype=dtype)
        nbytes = (batch * n * dim + batch * q * dim) * itemsize
        flops = 4 * batch * n * q * heads * dim + 4 * batch * q * dim * dim
        kw = dict(nbytes=nbytes, flops=flops, baseline="official eager")
        with torch.no_grad():
            ctx.measure(case, "official eager", _timed(off, x, mode), **kw)
            if not ctx.quick and ctx.wants("official torch.compile"):
                ctx.measure(case, "official torch.compile", _timed(torch.compile(off), x, mode), **kw)
            if case.startswith("video") and mode == "fwd":
                frames = list(x.split(1))
                ctx.measure(case, "official per-frame loop", lambda off=off, fr=frames: [off(f) for f in fr],
                            **kw, min_run_time=0.0)  # fmt: skip
            ctx.measure(case, "lmini reference", _timed(lambda t, m=fused: m(t, backend="reference"), x, mode), **kw)
            for b in backends:
                ctx.measure(case, f"lmini {b}", _timed(lambda t, m=fused, b=b: m(t, backend=b), x, mode), **kw)
            if "cpu" in backends and device == "cpu" and mode == "fwd":
                # Diagnostic: the streaming kernel alone (x -> acc), without the GEMM epilogue.
                f, eps = fused.folded(n), fused.ln_kv.eps
                ctx.measure(case, "lmini cpu: streaming kernel only",
                            lambda x=x, f=f, e=eps: torch.ops.lmini.compress_folded(x, f.a, f.p, e, 0),
                            **kw)  # fmt: skip
        del off, fused, x
    if getattr(ctx.options, "goals", False):
        _goals(ctx, backends)


def _goals(ctx: BenchContext, backends: list[str]) -> None:
    """Print the issue's goals against this run's numbers."""
    rows = {(r.case, r.provider): r for r in ctx.rows}
    if ctx.device == "cpu" and "cpu" in backends:
        r = rows.get(("batch B=64", "lmini cpu"))
        if r is not None and r.speedup is not None:
            print(f"goal (CPU, fp32, B=64): >= 50x official eager -> {r.speedup:.1f}x; "
                  f">= 50% of copy bandwidth -> {r.frac_copy_bw:.0%}")  # fmt: skip
    if ctx.device == "cuda":
        for r in ctx.rows:
            if r.case.startswith("video") and r.provider.startswith("lmini") and r.provider != "lmini reference":
                loop = rows.get((r.case, "official per-frame loop"))
                vs = f"{loop.ms / r.ms:.0f}x the per-frame loop" if loop else "no loop measured"
                print(f"goal (GPU, B>=1024): >= 80% of copy BW and >= 100x the loop -> {r.provider}: "
                      f"{r.frac_copy_bw:.0%}, {vs}")  # fmt: skip
