"""Interleaved CPU timing of the pre-fusion module and op: ``python benchmarks/bench_prefusion_interleaved.py``.

On a shared machine another process's load lands on whichever provider happens to run, so
``lmini bench prefusion`` (one provider after the other) can swing by 2x. Here the providers of
a case run alternately, ``--repeats`` times, and the minimum of each is reported (the run least
disturbed by others) next to the median. Same models and shapes as the suite
(python/lmini_tools/bench/prefusion.py).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from lmini_kernels.ops.prefusion_attention import prefusion_attention
from lmini_kernels.ops.prefusion_attention.reference import visible_mask
from lmini_tools.bench.harness import cpu_name, interleaved_times
from lmini_tools.bench.prefusion import (
    N_COMPRESSED,
    N_TEXT,
    N_VISION,
    _model,
    _sdpa,
)


def interleave(cases: dict[str, dict[str, object]], repeats: int) -> None:
    for case, providers in cases.items():
        times = interleaved_times(providers, repeats)
        base = min(next(iter(times.values())))
        for name, ts in times.items():
            print(f"  {case:30s} {name:26s} min {min(ts):10.1f} ms  median {statistics.median(ts):10.1f} ms  "
                  f"speedup (min) {base / min(ts):5.2f}x")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--only-video", action="store_true")
    args = ap.parse_args()
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32")
    model = _model("cpu", torch.float32)
    fused = model.fused_prefusion(backend="cpu")
    h = model.config.text.hidden_size
    vision, comp, text = (torch.randn(1, k, h) for k in (N_VISION, N_COMPRESSED, N_TEXT))
    pad = torch.zeros(1, N_TEXT, dtype=torch.bool)
    pad[:, 1] = True
    cache = fused.prefill(vision, comp)
    qs = [torch.randn_like(text) for _ in range(5)]
    q, k, v = torch.randn(1, 44, 32, 128), torch.randn(1, 620, 32, 128), torch.randn(1, 620, 32, 128)
    mask = visible_mask(44, 620, True, None, "cpu")

    def five_fused():
        *_, c = fused(vision, comp, qs[0], pad, return_cache=True)
        return [fused.fuse(c, t, pad) for t in qs[1:]]

    frames = args.frames
    video = [torch.randn(1, frames, n, h) for n in (N_VISION, N_COMPRESSED)]

    def official_video():
        total = sum(
            model.official_prefusion(video[0][:, t], video[1][:, t], text, pad)[1].float() for t in range(frames)
        )
        return total / frames

    chunk = model.VIDEO_CHUNK_FRAMES["cpu"]

    def fused_video():
        return fused.fuse_video(
            ((video[0][:, t : t + chunk], video[1][:, t : t + chunk]) for t in range(0, frames, chunk)), text, pad
        )

    with torch.no_grad():
        if not args.only_video:
            interleave({"attn suffix 44x620 (op)": {"sdpa": lambda: _sdpa(q, k, v, mask),
                                                    "lmini cpu": lambda: prefusion_attention(q, k, v, backend="cpu")}},
                       args.repeats * 4)  # fmt: skip
            official = model.official_prefusion
            module_cases = {
                "module 1 question": {
                    "official eager": lambda: official(vision, comp, text, pad),
                    "FusedPreFusion": lambda: fused(vision, comp, text, pad),
                },
                "module follow-up question": {
                    "official eager": lambda: official(vision, comp, qs[1], pad),
                    "FusedPreFusion (cached)": lambda: fused.fuse(cache, qs[1], pad),
                },
                "module 5 questions": {
                    "official eager": lambda: [official(vision, comp, t, pad) for t in qs],
                    "FusedPreFusion": five_fused,
                },
            }
            interleave(module_cases, args.repeats)
        interleave({f"module video {frames} frames": {"official eager": official_video, "FusedPreFusion": fused_video}},
                   max(1, args.repeats // 2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
