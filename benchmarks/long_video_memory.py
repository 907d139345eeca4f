"""A long video streamed through the reference LLaVA-Mini model on CPU, with peak memory measured.

Encodes an MP4 of ``--frames`` seconds at 1 fps (so ``--frames`` sampled frames: one per second,
as the official sampling takes) with PyAV, then streams it: ``llava_mini.video.stream_video``
decodes and preprocesses ``--chunk`` frames at a time, and ``LlavaMini.encode_video_sum`` runs
each chunk through CLIP, the compressor and the batched pre-fusion, keeping only the C*C tokens
per frame and the float32 sum of the fused text. Reports the process's peak resident memory
(``ru_maxrss``) before and after the stream, and the time per frame.

    python benchmarks/long_video_memory.py --frames 10000 [--config tiny] [--chunk 16]

Run it once per length (each run is its own process, so each peak is its own): the peak should
not grow with ``--frames`` beyond the frame tokens themselves (frames * C*C * hidden values).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from llava_mini import IMAGE_TOKEN_INDEX, LlavaMini, LlavaMiniConfig  # noqa: E402
from llava_mini.preprocess import ImagePreprocessor  # noqa: E402
from llava_mini.video import stream_video  # noqa: E402


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_video(path: Path, frames: int, size: int = 32) -> None:
    """An MP4 of ``frames`` frames at 1 fps whose colour changes every frame."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=1)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((size, size, 3), (i * 37 % 256, i * 91 % 256, i * 13 % 256), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=10_000, help="sampled frames (seconds of video at 1 fps)")
    p.add_argument("--config", default="tiny", choices=LlavaMiniConfig.names())
    p.add_argument("--chunk", type=int, default=16, help="frames decoded and run per chunk")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.frames < 1 or args.chunk < 1:
        p.error("--frames and --chunk must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = LlavaMiniConfig.from_name(args.config)
    model = LlavaMini(config, backend="auto").init_random_weights(0).eval()
    pre = ImagePreprocessor.for_model(config)
    ids = torch.randint(1, config.text.vocab_size, (1, 12))
    ids[0, 2] = IMAGE_TOKEN_INDEX
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.mp4"
        t0 = time.perf_counter()
        write_video(path, args.frames)
        encode_s = time.perf_counter() - t0
        before = peak_rss_mib()
        t0 = time.perf_counter()
        with torch.no_grad():
            chunks = (c.unsqueeze(0) for c in stream_video(path, pre, chunk_frames=args.chunk))
            tokens, text_sum, frames = model.encode_video_sum(ids, chunks)
            text = model.video_text_mean(text_sum, frames)
        run_s = time.perf_counter() - t0
        after = peak_rss_mib()
    row = {
        "config": args.config,
        "frames": frames,
        "chunk": args.chunk,
        "tokens_shape": list(tokens.shape),
        "tokens_mib": tokens.numel() * tokens.element_size() / 2**20,
        "peak_rss_before_mib": round(before, 1),
        "peak_rss_after_mib": round(after, 1),
        "peak_growth_mib": round(after - before, 1),
        "ms_per_frame": round(1e3 * run_s / frames, 3),
        "video_encode_s": round(encode_s, 1),
        "threads": torch.get_num_threads(),
        "finite": bool(torch.isfinite(text).all()),
    }
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
