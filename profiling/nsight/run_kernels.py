"""Driver for ncu_kernels.sh: one public op on its LLaVA-Mini shape, a few calls, one backend.

Shapes (float16): compress: one 336 px image's CLIP features (1, 576, 1024) into 1 query,
8 heads; prefusion_attention: 44 kept rows over 621 keys, 32 heads of 128, causal;
row_softmax: the pre-fusion score rows (32 x 621, 621). Without a CUDA GPU it prints one line
and exits 2.
"""

from __future__ import annotations

import argparse
import sys

OPS = ("compress", "prefusion_attention", "row_softmax")


def make_call(op: str, backend: str):
    import torch

    import lmini_kernels

    dev, dt = "cuda", torch.float16
    if op == "compress":
        from llava_mini import Resampler

        with torch.device(dev):
            res = Resampler(1, 1024, 8).to(dt)
        x = torch.randn(1, 576, 1024, device=dev, dtype=dt)
        return lambda: res(x, backend=backend)
    if op == "prefusion_attention":
        q = torch.randn(1, 44, 32, 128, device=dev, dtype=dt)
        k, v = (torch.randn(1, 621, 32, 128, device=dev, dtype=dt) for _ in range(2))
        return lambda: lmini_kernels.prefusion_attention(q, k, v, causal=True, backend=backend)
    if op == "row_softmax":
        x = torch.randn(32 * 621, 621, device=dev, dtype=dt)
        return lambda: lmini_kernels.row_softmax(x, 0.088, backend=backend)
    raise ValueError(f"op: expected one of {OPS}, got {op!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--op", required=True, choices=OPS)
    p.add_argument("--backend", default="triton", choices=("triton", "cuda", "cpu", "reference"))
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("run_kernels.py: no CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    call = make_call(args.op, args.backend)
    for _ in range(args.iters):
        call()
    torch.cuda.synchronize()
    print(f"run_kernels.py: {args.iters} calls of {args.op} ({args.backend}) on {torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
