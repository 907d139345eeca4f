"""``lmini video-dist``: a synthetic video's frames sharded over ``torchrun`` ranks, one answer.

Run it under ``torchrun --nproc-per-node N $(which lmini) video-dist --frames F`` (or
``torchrun ... -m lmini_tools.video_dist``); without torchrun it runs as one rank. Every rank
builds the same random-weight model (``--config``: a tiny config or ``mid``, a mid-size one
defined here), makes its own contiguous share of a synthetic video (``lmini demo``'s frames,
so no rank needs another's frames) and runs :func:`llava_mini.distributed.encode_video_distributed`.
Rank 0 prints each rank's frames, its time per frame and the collectives' time; with
``--check`` (the default) it also encodes the whole video in one process and compares
(relative norm; exit status 1 above ``--tol``). :func:`scaling_table` is the scaling model
of the README's "Long video across processes" section.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from datetime import timedelta

from lmini_tools.args import UsageError, add_model_options, positive_float, positive_int

CONFIGS = ("tiny", "tiny-c2", "tiny-hd", "mid", "mid-hd")


def mid_config(hd: bool = False):
    """A mid-size LLaVA-Mini (random weights only): 112 px frames of 14 px patches (64 patch
    tokens), a 4-layer CLIP of width 256, hidden 512 with 4 pre-fusion layers; C = 1 (``hd``:
    resolution ratio 2 and C = 2)."""
    from llava_mini.config import LlavaMiniConfig, TextConfig, VisionConfig

    vision = VisionConfig(
        image_size=112, patch_size=14, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4
    )
    text = TextConfig(
        vocab_size=1000, hidden_size=512, intermediate_size=1376, num_layers=2, num_heads=8, num_kv_heads=8
    )
    return LlavaMiniConfig(
        name="mid-hd" if hd else "mid",
        vision=vision,
        text=text,
        compressor_size=2 if hd else 1,
        compressor_heads=8,
        prefusion_layers=4,
        resolution_ratio=2 if hd else 1,
    )


def scaling_table(
    frames: int,
    ranks: list[int],
    *,
    frame_s: float,
    token_bytes_per_frame: float,
    text_sum_bytes: float,
    link_bytes_per_s: float,
    latency_s: float,
    serial_s: float = 0.0,
) -> list[dict[str, float]]:
    """The scaling model of a video of ``frames`` frames sharded over each rank count in ``ranks``.

    Per rank count G: ``encode_s = ceil(frames / G) * frame_s`` (the largest share; frames are
    independent until the mean), ``comm_s`` = the three collectives of
    :func:`~llava_mini.distributed.encode_video_distributed` at ``latency_s`` each per
    ``ceil(log2 G)`` step, plus the token rows padded to the largest share arriving on rank 0
    over one link, ``(G - 1) * ceil(frames / G) * token_bytes_per_frame / link_bytes_per_s``,
    plus a ring reduction of the float32 text sum, ``2 (G - 1) / G * text_sum_bytes / link``;
    ``serial_s`` is what does not shrink (the LLM on rank 0). Returns one dict per G: ranks,
    encode_s, comm_s, total_s, speedup (over G = 1 of the same model) and efficiency (speedup / G).
    """
    for name, v in (("frames", frames),):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    if not ranks or any(not isinstance(g, int) or g < 1 for g in ranks):
        raise ValueError(f"ranks: expected a non-empty list of ints >= 1, got {ranks!r}")
    for name, v in (("frame_s", frame_s), ("link_bytes_per_s", link_bytes_per_s)):
        if not v > 0:
            raise ValueError(f"{name}: expected a number > 0, got {v!r}")
    for name, v in (
        ("token_bytes_per_frame", token_bytes_per_frame),
        ("text_sum_bytes", text_sum_bytes),
        ("latency_s", latency_s),
        ("serial_s", serial_s),
    ):
        if not v >= 0:
            raise ValueError(f"{name}: expected a number >= 0, got {v!r}")

    def one(g: int) -> tuple[float, float]:
        share = math.ceil(frames / g)
        if g == 1:
            return share * frame_s, 0.0
        steps = math.ceil(math.log2(g))
        comm = 3 * latency_s * steps
        comm += (g - 1) * share * token_bytes_per_frame / link_bytes_per_s
        comm += 2 * (g - 1) / g * text_sum_bytes / link_bytes_per_s
        return share * frame_s, comm

    enc1, comm1 = one(1)
    base = enc1 + comm1 + serial_s
    rows = []
    for g in ranks:
        enc, comm = one(g)
        total = enc + comm + serial_s
        rows.append(
            dict(ranks=g, encode_s=enc, comm_s=comm, total_s=total, speedup=base / total, efficiency=base / total / g)
        )
    return rows


def _init_group(device: str, timeout_s: float) -> tuple[bool, str | None]:
    """Initialise the process group from torchrun's environment, or a one-rank group on a
    FileStore. Returns (launched by torchrun, the store file to remove)."""
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, timeout=timeout)
        return True, None
    fd, store = tempfile.mkstemp(prefix="lmini-video-dist-")
    os.close(fd)
    os.unlink(store)  # the FileStore creates it
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1, timeout=timeout)
    return False, store


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lmini video-dist``; returns the exit status."""
    p = argparse.ArgumentParser(prog="lmini video-dist", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="mid", choices=CONFIGS, help="model (random weights); mid: see mid_config")
    p.add_argument("--frames", type=positive_int, default=16, help="frames of the synthetic video")
    p.add_argument("--text-tokens", type=positive_int, default=16, help="question length (the placeholder included)")
    add_model_options(p, device="cpu", device_help="cuda: each rank on cuda:LOCAL_RANK, NCCL")
    p.add_argument("--prefusion", default="auto", choices=("auto", "fused", "official"))
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads per rank (default: torch's)")
    p.add_argument("--repeats", type=positive_int, default=2, help="timed runs after one warm-up; the fastest is shown")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the one-process check on rank 0")
    p.add_argument("--tol", type=positive_float, default=None, help="check tolerance (default 1e-5 fp32, 1e-2 else)")
    p.add_argument("--timeout", type=positive_float, default=300.0, help="process-group timeout in seconds")
    p.add_argument("--seed", type=int, default=0)
    if argv and argv[0] == "--":
        argv = argv[1:]
    args = p.parse_args(argv)

    import torch
    import torch.distributed as dist

    from llava_mini.config import IMAGE_TOKEN_INDEX, LlavaMiniConfig
    from llava_mini.distributed import encode_video_distributed, frame_share
    from llava_mini.model import LlavaMini
    from lmini_tools.args import resolve_device
    from lmini_tools.demo import synthetic_image

    device_type = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    dtype = getattr(torch, args.dtype)
    cfg = (
        mid_config(args.config == "mid-hd") if args.config.startswith("mid") else LlavaMiniConfig.from_name(args.config)
    )
    if args.text_tokens < 2:
        raise UsageError(
            f"--text-tokens: expected at least 2 (a token and the image placeholder), got {args.text_tokens}"
        )

    launched, store = _init_group(device_type, args.timeout)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        model = (
            LlavaMini(cfg, backend=args.backend).init_random_weights(args.seed).to(device=device, dtype=dtype).eval()
        )
        gen = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(1, cfg.text.vocab_size, (1, args.text_tokens), generator=gen)
        ids[0, 1] = IMAGE_TOKEN_INDEX
        ids = ids.to(device)
        mine = frame_share(args.frames, rank, world)
        step = model.video_chunk_frames

        def my_chunks():
            for t in range(mine.start, mine.stop, step):
                frames = [synthetic_image(cfg, f) for f in range(t, min(t + step, mine.stop))]
                yield torch.stack(frames)[None].to(device)

        runs = []  # this rank's (frames, local s, collectives s) of every timed run
        result = None
        for i in range(args.repeats + 1):
            timings: dict[str, float] = {}
            dist.barrier()
            result = encode_video_distributed(model, ids, my_chunks(), prefusion=args.prefusion, timings=timings)
            if i > 0:  # the first run is the warm-up
                runs.append([timings["local_frames"], timings["local_s"], timings["comm_s"]])
        mine_t = torch.tensor(runs, dtype=torch.float64)
        gathered = [torch.empty_like(mine_t) for _ in range(world)]
        dist.all_gather(gathered, mine_t)
        all_runs = torch.stack(gathered)  # (rank, run, 3)
        walls = (all_runs[..., 1] + all_runs[..., 2]).amax(0)  # each run's wall time: its slowest rank
        every = all_runs[:, int(walls.argmin())]
        if rank != 0:
            return 0
        status = 0
        print(
            f"lmini video-dist: config {cfg.name}, {args.frames} frames over {world} rank(s)"
            f" ({'torchrun' if launched else 'one process'}), {device.type}, {args.dtype}, backend {args.backend},"
            f" {torch.get_num_threads()} thread(s) per rank; the fastest of {args.repeats} runs (by its slowest rank)"
        )
        print(f"{'rank':>4} {'frames':>6} {'local s':>9} {'ms/frame':>9} {'collectives ms':>15}")
        for r, row in enumerate(every):
            n, local, comm = row.tolist()
            per = f"{local / n * 1e3:9.2f}" if n else f"{'-':>9}"
            print(f"{r:>4} {int(n):>6} {local:>9.3f} {per} {comm * 1e3:>15.2f}")
        print("(collectives: from the end of the rank's own frames, the wait for the slowest rank included)")
        wall = float(walls.min())
        print(f"distributed encode: {wall:.3f} s ({wall / args.frames * 1e3:.2f} ms per frame of the video)")
        if args.check:
            video = torch.stack([synthetic_image(cfg, f) for f in range(args.frames)])[None].to(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                tokens, text = model.encode_multimodal(ids, video, prefusion=args.prefusion)
            one = time.perf_counter() - t0
            tol = args.tol if args.tol is not None else (1e-5 if dtype == torch.float32 else 1e-2)
            errors = []
            for name, got, ref in (("tokens", result[0], tokens), ("fused text", result[1], text)):
                if got.shape != ref.shape:
                    print(f"check FAILED: {name} shape {tuple(got.shape)}, one process {tuple(ref.shape)}")
                    status = 1
                    continue
                errors.append((name, float((got.double() - ref.double()).norm() / ref.double().norm())))
            print(
                f"one process on rank 0: {one:.3f} s ({one / args.frames * 1e3:.2f} ms/frame);"
                f" relative error " + ", ".join(f"{n} {e:.1e}" for n, e in errors) + f" (tolerance {tol:g})"
            )
            if any(e > tol for _, e in errors):
                print("check FAILED")
                status = 1
            elif status == 0:
                print("check ok: the distributed result is the one-process result")
        return status
    finally:
        dist.destroy_process_group()
        if store is not None and os.path.exists(store):
            os.unlink(store)


if __name__ == "__main__":
    raise SystemExit(main())
