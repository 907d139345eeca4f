"""Driver for nsys_pipeline.sh: LLaVA-Mini requests on the GPU with NVTX ranges, random weights.

Warm-up iterations run first; the profiled ones sit between cudaProfilerStart/Stop so
``nsys --capture-range=cudaProfilerApi`` records only them. Without a CUDA GPU it prints one
line and exits 2.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="llava-mini-vicuna-7b", help="LlavaMiniConfig name, or 'reduced'")
    p.add_argument("--frames", type=int, default=0, help="0: one image; N: a video of N frames (streaming pipeline)")
    p.add_argument("--official-video", action="store_true", help="video through the official per-frame loop")
    p.add_argument("--text-tokens", type=int, default=43)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("run_pipeline.py: no CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    from llava_mini import LlavaMini, LlavaMiniConfig
    from lmini_kernels import nvtx
    from lmini_tools.profiling import memory

    cfg = memory.reduced_config() if args.config == "reduced" else LlavaMiniConfig.from_name(args.config)
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        model = LlavaMini(cfg).eval()  # random init directly on the GPU
    torch.set_default_dtype(torch.float32)
    model.materialize_buffers("cuda")
    nvtx.annotate_modules((s.label, s.module) for s in model.stages())
    req = memory.Request(text_tokens=args.text_tokens, new_tokens=args.new_tokens, frames=max(1, args.frames))
    if args.frames == 0:
        run = lambda: memory.image_request(model, None, req)  # noqa: E731
    elif args.official_video:
        run = lambda: memory.video_official(model, None, req)  # noqa: E731
    else:
        run = lambda: memory.video_streaming(model, None, req)  # noqa: E731
    with torch.no_grad():
        for _ in range(args.warmup):
            run()
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for i in range(args.iters):
            with nvtx.range(f"lmini.pipeline.request{i}"):
                run()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    print(f"run_pipeline.py: {args.iters} requests of {cfg.name} on {torch.cuda.get_device_name()}, "
          f"max_memory_allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
