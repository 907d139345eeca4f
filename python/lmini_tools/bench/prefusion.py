"""``lmini bench prefusion``: the pre-fusion attention op and the FusedPreFusion module beside
their baselines, side by side in one run.

Attention (flash-attn layout (B, L, H, d), causal aligned bottom-right, 32 heads, d = 128):
cases ``suffix`` (Lq 44 over Lk 620: the text rows of a question over a cached image prefix),
``full causal`` (620 x 620: the official pre-fusion's shape) and ``frames`` (64 frames' suffixes
in one batch; 16 with ``--quick``). Providers: torch SDPA (the baseline; an explicit boolean
mask, since SDPA's own ``is_causal`` is top-left aligned), SDPA under torch.compile,
flash-attn when importable, and each backend of :func:`lmini_kernels.prefusion_attention` that
runs on the device for real (no interpreter or emulator). FLOPs: 4 * B * H * d * (visible
query-key pairs); bytes: q, k, v read and out written once.

Module: the reference model's pre-fusion (official semantics: every row of every layer, per
question, a Python loop over video frames) against :class:`lmini_kernels.FusedPreFusion`
(pruned last layer, vision-prefix cache, batched frames). Cases: one question about one image,
five questions about one image (the official code recomputes everything per question; we
prefill once), and a 64-frame video (16 with ``--quick``; chunks of ``LlavaMini.VIDEO_CHUNK_FRAMES`` frames). 7B shapes
(Vicuna-7B: hidden 4096, 32 heads, MLP 11008, 4 layers) on GPU in fp16; on CPU a narrower
model with the real token counts (hidden 1024, 8 heads of 128, MLP 2752, 4 layers; 576 vision
tokens, 1 compressed, 43 text) in fp32. FLOPs: the official computation's count (FlopCounterMode
convention, attention included), the same for every provider, so TFLOP/s is effective work;
bytes: the layers' weights read once per question or frame.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from lmini_kernels.dispatch import registry
from lmini_kernels.ops.prefusion_attention import prefusion_attention
from lmini_kernels.ops.prefusion_attention.reference import visible_mask
from lmini_tools.bench.harness import BenchContext
from lmini_tools.progress import steps

HEADS, HEAD_DIM = 32, 128
N_VISION, N_COMPRESSED, N_TEXT = 576, 1, 43


def visible_pairs(lq: int, lk: int) -> int:
    """Query-key pairs a bottom-right causal mask leaves visible."""
    return lq * (lk - lq) + lq * (lq + 1) // 2


def _backends(device: str) -> list[str]:
    """Backends of prefusion_attention that run on this device for real."""
    return [
        b.name
        for b in registry("prefusion_attention").backends
        if b.name != "reference" and b.unavailable_reason() is None and device in b.devices
    ]


def _flash_attn():
    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found]
    except ImportError:
        return None
    return flash_attn_func


def _sdpa(q, k, v, mask):
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return o.transpose(1, 2)


def run_attention(ctx: BenchContext) -> None:
    device = ctx.device
    dtype = ctx.dtype_or(torch.float16 if device == "cuda" else torch.float32)
    frames = 16 if ctx.quick else 64
    cases = [("attn suffix 44x620", 1, 44, 620), ("attn full 620x620", 1, 620, 620)]
    cases.append((f"attn frames B={frames} 44x620", frames, 44, 620))
    flash = _flash_attn() if device == "cuda" else None
    compiled_sdpa = None if ctx.quick else torch.compile(_sdpa)
    for case, b, lq, lk in steps(cases, "bench prefusion: case", label=lambda c: c[0]):
        q = torch.randn(b, lq, HEADS, HEAD_DIM, device=device, dtype=dtype)
        k = torch.randn(b, lk, HEADS, HEAD_DIM, device=device, dtype=dtype)
        v = torch.randn(b, lk, HEADS, HEAD_DIM, device=device, dtype=dtype)
        mask = visible_mask(lq, lk, True, None, device)
        itemsize = q.element_size()
        kw = dict(
            nbytes=(2 * q.numel() + k.numel() + v.numel()) * itemsize,
            flops=4 * b * HEADS * HEAD_DIM * visible_pairs(lq, lk),
            baseline="sdpa",
        )
        with torch.no_grad():
            ctx.measure(case, "sdpa", lambda q=q, k=k, v=v, m=mask: _sdpa(q, k, v, m), **kw)
            if compiled_sdpa is not None:
                ctx.measure(case, "sdpa torch.compile", lambda q=q, k=k, v=v, m=mask: compiled_sdpa(q, k, v, m), **kw)
            if flash is not None:
                ctx.measure(case, "flash-attn", lambda q=q, k=k, v=v: flash(q, k, v, causal=True), **kw)
            for name in ["reference", *_backends(device)]:
                fn = lambda q=q, k=k, v=v, n=name: prefusion_attention(q, k, v, backend=n)  # noqa: E731
                ctx.measure(case, f"lmini {name}", fn, **kw, min_run_time=0.0 if name == "reference" else None)


def _model(device: str, dtype: torch.dtype):
    """A reference model whose pre-fusion layers have random weights (nothing else is built)."""
    from llava_mini import LlavaMini, LlavaMiniConfig
    from llava_mini.config import TextConfig

    cfg = LlavaMiniConfig.from_name("llava-mini-vicuna-7b")
    if device != "cuda":
        text = TextConfig(hidden_size=1024, intermediate_size=2752, num_heads=8, num_kv_heads=8, vocab_size=1000)
        cfg = dataclasses.replace(cfg, text=text)
    with torch.device("meta"):
        model = LlavaMini(cfg, backend="reference")
    layers = model.model.prefusion_layers.to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in layers.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.02 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5)
    layers.to(dtype)
    model.materialize_buffers(device)
    return model


def run_module(ctx: BenchContext) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    device = ctx.device
    dtype = ctx.dtype_or(torch.float16 if device == "cuda" else torch.float32)
    model = _model(device, dtype)
    fused = model.fused_prefusion(backend="auto")
    hidden = model.config.text.hidden_size
    weight_bytes = sum(p.numel() * p.element_size() for p in model.model.prefusion_layers.parameters())

    def tokens(b: int):
        return (torch.randn(b, k, hidden, device=device, dtype=dtype) for k in (N_VISION, N_COMPRESSED, N_TEXT))

    vision, comp, text = tokens(1)
    pad = torch.zeros(1, N_TEXT, dtype=torch.bool, device=device)
    pad[:, 1] = True  # the image placeholder is a padded row of the official pre-fusion
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.official_prefusion(vision, comp, text, pad)
    per_question = counter.get_total_flops()
    questions = [torch.randn_like(text) for _ in range(5)]
    frames = 16 if ctx.quick else 64
    video = [torch.randn(1, frames, k, hidden, device=device, dtype=dtype) for k in (N_VISION, N_COMPRESSED)]

    def official_video():
        total = None
        for t in range(frames):
            _, txt = model.official_prefusion(video[0][:, t], video[1][:, t], text, pad)
            total = txt.float() if total is None else total + txt.float()
        return (total / frames).to(dtype)

    chunk = model.VIDEO_CHUNK_FRAMES[device]

    def fused_video():
        chunks = ((video[0][:, t : t + chunk], video[1][:, t : t + chunk]) for t in range(0, frames, chunk))
        return fused.fuse_video(chunks, text, pad)

    def five_official():
        return [model.official_prefusion(vision, comp, t, pad) for t in questions]

    def five_fused():
        *_, cache = fused(vision, comp, questions[0], pad, return_cache=True)
        return [fused.fuse(cache, t, pad) for t in questions[1:]]

    one = dict(nbytes=weight_bytes, flops=per_question, baseline="official eager")
    five = dict(nbytes=5 * weight_bytes, flops=5 * per_question, baseline="official eager")
    vid = dict(nbytes=frames * weight_bytes, flops=frames * per_question, baseline="official eager",
               min_run_time=0.0)  # fmt: skip
    cache = fused.prefill(vision, comp)
    with torch.no_grad():
        ctx.measure("module 1 question", "official eager", lambda: model.official_prefusion(vision, comp, text, pad),
                    **one)  # fmt: skip
        if not ctx.quick:
            compiled = torch.compile(model.official_prefusion)
            ctx.measure("module 1 question", "official torch.compile",
                        lambda: compiled(vision, comp, text, pad), **one)  # fmt: skip
        ctx.measure("module 1 question", "FusedPreFusion", lambda: fused(vision, comp, text, pad), **one)
        ctx.measure("module follow-up question", "official eager",
                    lambda: model.official_prefusion(vision, comp, questions[1], pad), **one)  # fmt: skip
        ctx.measure("module follow-up question", "FusedPreFusion (cached)",
                    lambda: fused.fuse(cache, questions[1], pad), **one)  # fmt: skip
        ctx.measure("module 5 questions, 1 image", "official eager", five_official, **five)
        ctx.measure("module 5 questions, 1 image", "FusedPreFusion", five_fused, **five)
        ctx.measure(f"module video {frames} frames", "official eager", official_video, **vid)
        ctx.measure(f"module video {frames} frames", "FusedPreFusion", fused_video, **vid)


def run(ctx: BenchContext) -> None:
    """Attention op cases, then module cases (see the module docstring)."""
    run_attention(ctx)
    run_module(ctx)
    if getattr(ctx.options, "goals", False):
        _goals(ctx)


def _goals(ctx: BenchContext) -> None:
    """Print the issue's goals against this run's numbers."""
    rows = {(r.case, r.provider): r for r in ctx.rows}

    def ratio(case: str, prov: str) -> str:
        r = rows.get((case, prov))
        return f"{r.speedup:.2f}x" if r is not None and r.speedup else "not measured"

    if ctx.device == "cpu":
        print(
            f"goal (CPU): op >= 1.0x SDPA at the suffix shape -> lmini cpu {ratio('attn suffix 44x620', 'lmini cpu')}"
        )
    else:
        for case in ("attn suffix 44x620", "attn full 620x620"):
            fa = rows.get((case, "flash-attn"))
            for prov in ("lmini triton", "lmini cuda"):
                r = rows.get((case, prov))
                if fa is not None and r is not None:
                    print(f"goal (GPU): >= 0.9x flash-attn TFLOP/s at {case} -> {prov}: {r.tflops / fa.tflops:.2f}x")
    print(f"goal: module >= 1.2x official for 1 question -> {ratio('module 1 question', 'FusedPreFusion')}")
    print(f"goal: >= 5x per follow-up question -> {ratio('module follow-up question', 'FusedPreFusion (cached)')}")
    vcase = next((c for c, _ in rows if c.startswith("module video")), "")
    print(f"goal: >= 1.2x for the video -> {ratio(vcase, 'FusedPreFusion')}")
