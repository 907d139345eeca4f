"""CPU timing of the official-LLaVA-Mini patch: ``python benchmarks/bench_official_patch.py``.

Two instances of the stand-in of the official model (tests/integrations/official_standin.py)
with the same random weights, one patched with ``apply_lmini_kernels_to_llava_mini``, run in
turn (``interleaved_times``: another process's load spreads over both) on the full forward
(logits) of three cases: one question about an image, a follow-up question about the same
image tensor (the patched one hits its prefix cache), and a video. Prints the minimum and median
of each, the speedup of the minima and the patched logits' relative error.

Configs: ``tiny`` (the tests' shapes) and ``mid``: hidden 1024 (8 heads of 128), 4 pre-fusion
layers, 2 LLM layers, a CLIP-like tower of width 1024 on a 24 x 24 patch grid (336 px, patch 14)
but 2 layers deep (the tower is the same code in both instances; a 24-layer one would only add
the same time to both), 43 text tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "integrations"), str(ROOT / "python")]

from official_standin import IMAGE_TOKEN_INDEX, build_standin  # noqa: E402

from lmini_kernels.integrations import apply_lmini_kernels_to_llava_mini  # noqa: E402
from lmini_tools.bench.harness import cpu_name, interleaved_times  # noqa: E402

CONFIGS = {
    "tiny": {},
    "mid": dict(hidden=1024, heads=8, kv_heads=8, intermediate=2816, llm_layers=2, prefusion_layers=4, vocab=1000,
                clip_width=1024, clip_layers=2, clip_heads=16, image_size=336, patch=14, compressor_heads=8),
}  # fmt: skip
N_TEXT = 43


def run(name: str, repeats: int, frames: int) -> None:
    kw = CONFIGS[name]
    official, patched = build_standin(seed=0, std=0.02, **kw), build_standin(seed=0, std=0.02, **kw)
    apply_lmini_kernels_to_llava_mini(patched)
    gen = torch.Generator().manual_seed(1)
    cfg = official.config
    ids = torch.randint(1, cfg.vocab_size, (1, N_TEXT), generator=gen)
    ids[0, 5] = IMAGE_TOKEN_INDEX
    follow = torch.randint(1, cfg.vocab_size, (1, N_TEXT), generator=gen)
    follow[0, 5] = IMAGE_TOKEN_INDEX
    size = cfg.vision_config_obj.image_size
    image = torch.randn(1, 1, 3, size, size, generator=gen)
    video = torch.randn(1, frames, 1, 3, size, size, generator=gen)
    # (question, pixels, fresh): a fresh copy of the pixels per call is a new image (a cache miss)
    cases = {
        "one question (new image)": (ids, image, True),
        "follow-up question (same image)": (follow, image, False),
        f"video, {frames} frames": (ids, video, False),
    }
    side = cfg.vision_config_obj.image_size // cfg.vision_config_obj.patch_size
    print(f"{name}: hidden {cfg.hidden_size}, {cfg.prefusion_layer_num} pre-fusion layers, {side}^2 patches, "
          f"{N_TEXT} text tokens")  # fmt: skip
    with torch.no_grad():
        patched(input_ids=ids, images=image)  # the image's prefix enters the cache (a follow-up hits it)
        for case, (q, images, fresh) in cases.items():
            ref = official(input_ids=q, images=images).logits
            out = patched(input_ids=q, images=images.clone() if fresh else images).logits
            err = ((out - ref).norm() / ref.norm()).item()
            pixels = (lambda x=images: x.clone()) if fresh else (lambda x=images: x)
            times = interleaved_times(
                {"official": lambda q=q, px=pixels: official(input_ids=q, images=px()),
                 "patched": lambda q=q, px=pixels: patched(input_ids=q, images=px())},
                repeats,
            )  # fmt: skip
            o, p = times["official"], times["patched"]
            stats = patched.__dict__["_lmini_kernels_patch"].stats
            print(f"  {case:34s} official min {min(o):9.1f} ms (median {statistics.median(o):9.1f})  "
                  f"patched min {min(p):9.1f} ms (median {statistics.median(p):9.1f})  "
                  f"speedup {min(o) / min(p):5.2f}x  rel err {err:.1e}  "
                  f"(cache hits {stats.hits}, misses {stats.misses})")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=[*CONFIGS, "both"], default="both")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args()
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32")
    for name in CONFIGS if args.config == "both" else [args.config]:
        run(name, args.repeats, args.frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
