"""The README's simulated scaling tables of a video sharded over ranks: ``python benchmarks/video_dist_scaling.py``.

A model, not a measurement: :func:`lmini_tools.video_dist.scaling_table` fed with the inputs
below. The CPU rows take the per-frame cost measured by ``lmini video-dist --config mid``
(``--cpu-frame-ms``); the GPU rows take a per-frame cost derived from the FLOP count of
``lmini profile flops`` at an *assumed* sustained throughput (no GPU was used).
"""

from __future__ import annotations

import argparse

from lmini_tools.video_dist import scaling_table

FRAMES = (10_000, 100_000)
RANKS = [1, 2, 4, 8]

# llava-mini-llama3.1-8b on the fused path, 43 text tokens, paper convention (weight matmuls),
# from `count_case(FlopCase(..., pipeline="fused"))` of lmini_tools.profiling.flops:
GPU_FRAME_FLOPS = (
    334_669_283_328 + 24_201_134_080 + 13_631_488 + 841_947_807_744
)  # ViT + projector + compressor + pre-fusion
GPU_LLM_FLOPS_PER_TOKEN = 660_409_942_016 / 44  # the LLM's weight matmuls over 43 text tokens + 1 vision token
GPU_HIDDEN, GPU_LAYERS, GPU_TEXT = 4096, 32, 43


def _table(title: str, rows_by_frames: dict[int, list[dict[str, float]]], serial: dict[int, float]) -> str:
    out = [
        title,
        "",
        "| frames | ranks | encode s | collectives s | serial s | total s | speedup | efficiency |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for frames, rows in rows_by_frames.items():
        for r in rows:
            out.append(
                f"| {frames:,} | {r['ranks']} | {r['encode_s']:.1f} | {r['comm_s']:.3f} | {serial[frames]:.1f} |"
                f" {r['total_s']:.1f} |"
                f" {r['speedup']:.2f}x | {r['efficiency']:.0%} |"
            )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cpu-frame-ms", type=float, required=True, help="measured ms per frame, lmini video-dist --config mid"
    )
    p.add_argument("--cpu-latency-ms", type=float, default=1.0, help="per collective step (gloo, measured order)")
    p.add_argument("--cpu-link-gbs", type=float, default=1.25, help="GB/s between hosts (10 GbE)")
    p.add_argument("--gpu-tflops", type=float, default=400.0, help="ASSUMED sustained fp16 TFLOP/s per GPU")
    p.add_argument("--gpu-link-gbs", type=float, default=25.0, help="ASSUMED GB/s into rank 0 (PCIe-class)")
    p.add_argument("--gpu-latency-us", type=float, default=50.0, help="ASSUMED per collective step")
    args = p.parse_args()

    cpu = {
        f: scaling_table(
            f,
            RANKS,
            frame_s=args.cpu_frame_ms / 1e3,
            token_bytes_per_frame=1 * 512 * 4,  # mid: C*C = 1 token of hidden 512 in fp32
            text_sum_bytes=16 * 512 * 4,  # 16 text tokens, fp32
            link_bytes_per_s=args.cpu_link_gbs * 1e9,
            latency_s=args.cpu_latency_ms / 1e3,
        )
        for f in FRAMES
    }
    rate = args.gpu_tflops * 1e12
    gpu, serials = {}, {}
    for f in FRAMES:
        tokens = f + GPU_TEXT
        # the LLM prefill on rank 0: weight matmuls plus causal attention (QK^T and PV: 2 L^2 hidden per layer)
        serial = serials[f] = (GPU_LLM_FLOPS_PER_TOKEN * tokens + 2 * tokens**2 * GPU_HIDDEN * GPU_LAYERS) / rate
        gpu[f] = scaling_table(
            f,
            RANKS,
            frame_s=GPU_FRAME_FLOPS / rate,
            token_bytes_per_frame=1 * GPU_HIDDEN * 2,  # C*C = 1 token of hidden 4096 in fp16
            text_sum_bytes=GPU_TEXT * GPU_HIDDEN * 4,
            link_bytes_per_s=args.gpu_link_gbs * 1e9,
            latency_s=args.gpu_latency_us / 1e6,
            serial_s=serial,
        )
    print(
        _table(
            f"CPU model: mid config, {args.cpu_frame_ms:g} ms/frame measured, one host per rank, LLM excluded",
            cpu,
            dict.fromkeys(FRAMES, 0.0),
        )
    )
    print()
    print(
        _table(
            f"GPU model: llava-mini-llama3.1-8b, {GPU_FRAME_FLOPS / 1e12:.2f} TFLOP/frame at an assumed"
            f" {args.gpu_tflops:g} TFLOP/s ({GPU_FRAME_FLOPS / rate * 1e3:.1f} ms/frame),"
            " LLM prefill (serial) on rank 0",
            gpu,
            serials,
        )
    )


if __name__ == "__main__":
    main()
