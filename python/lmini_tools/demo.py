"""``lmini demo``: the reference model end to end on synthetic inputs, with per-stage times.

Runs LLaVA-Mini (default: the ``tiny`` config, random weights; ``--model DIR``: a checkpoint
folder's config and weights, e.g. ``llava_mini.tiny_checkpoint``'s) and the matching LLaVA-v1.5
baseline (same CLIP and LLM, no compressor, no pre-fusion) on a synthetic image and a
16-frame synthetic video, with the fastest available backends (``backend="auto"``), and
prints per-stage times and how many vision tokens reach the LLM. No download, no network.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lmini_kernels
from llava_mini.config import IMAGE_TOKEN_INDEX, LlavaMiniConfig
from llava_mini.model import LlavaMini
from lmini_tools.args import UsageError, add_model_options, positive_int, resolve_device

STAGES = ("vision tower", "compressor", "projector", "pre-fusion", "LLM prefill", "decode / token")
TINY = ("tiny", "tiny-c2", "tiny-hd", "tiny-llama3")
REAL = ("llava-v1.5-7b", "llava-mini-vicuna-7b", "llava-mini-hd-vicuna-7b", "llava-mini-llama3.1-8b")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Accumulates wall time of modules through forward hooks (synchronising CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = defaultdict(float)
        self._handles: list = []

    def watch(self, stage: str, first: nn.Module, last: nn.Module | None = None) -> None:
        start: list[float] = []

        def pre(*_: object) -> None:
            _sync(self.device)
            start.append(time.perf_counter())

        def post(*_: object) -> None:
            _sync(self.device)
            self.ms[stage] += (time.perf_counter() - start.pop()) * 1e3

        self._handles += [first.register_forward_pre_hook(pre), (last or first).register_forward_hook(post)]

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        _sync(self.device)
        t0 = time.perf_counter()
        yield
        _sync(self.device)
        self.ms[stage] += (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def synthetic_image(cfg: LlavaMiniConfig, frame: int = 0) -> torch.Tensor:
    """A smooth colour pattern (drifting with ``frame``), split as the official ``split_image``:
    ratio x ratio crops row by row, then the whole image resized. Shape (parts, 3, S, S)."""
    s, r = cfg.vision.image_size, cfg.resolution_ratio
    side = s * r
    y, x = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    phase = 0.3 * frame
    img = torch.stack([torch.sin(6 * x + phase), torch.cos(5 * y - phase), torch.sin(4 * (x + y) + 2 * phase)])
    if r == 1:
        return img[None]
    crops = [img[:, i * s : (i + 1) * s, j * s : (j + 1) * s] for i in range(r) for j in range(r)]
    full = F.interpolate(img[None], size=(s, s), mode="bicubic", align_corners=False)[0]
    return torch.stack([*crops, full])


def _run(model: LlavaMini, ids: torch.Tensor, images: torch.Tensor, new_tokens: int) -> tuple[dict, int, list]:
    """One timed end-to-end run: stage times (ms), vision tokens reaching the LLM, generated ids."""
    timer = StageTimer(model.device)
    m = model.model
    timer.watch("vision tower", m.vision_tower)
    timer.watch("projector", m.mm_projector)
    if model.config.is_mini:
        timer.watch("compressor", m.compressor)
        # the official path runs the layers themselves; the fused path a FusedPreFusion over
        # their weights, built per call: time whichever runs
        timer.watch("pre-fusion", m.prefusion_layers[0], m.prefusion_layers[-1])
        build = model.fused_prefusion

        def fused_prefusion(**kwargs):
            fp = build(**kwargs)
            timer.watch("pre-fusion", fp)
            return fp

        model.fused_prefusion = fused_prefusion  # this instance only, removed below
    try:
        with torch.inference_mode():
            mm = model.prepare_inputs(ids, images)
            n = mm.inputs_embeds.shape[1]
            with timer.timing("LLM prefill"):
                model.decode(mm.inputs_embeds, mm.position_ids, mm.attention_mask)
            t0 = time.perf_counter()
            out = model.generate(ids, inputs=mm, max_new_tokens=new_tokens)
            _sync(model.device)
            total = (time.perf_counter() - t0) * 1e3
    finally:
        timer.close()
        model.__dict__.pop("fused_prefusion", None)
    timer.ms["decode / token"] = max(total - timer.ms["LLM prefill"], 0.0) / max(new_tokens - 1, 1)
    return dict(timer.ms), n - (ids.shape[1] - 1), out[0].tolist()


def _prompt_length(text: str) -> int:
    n = positive_int(text)
    if n < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 (a token and the image placeholder), got {n}")
    return n


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lmini demo``; returns the exit status."""
    p = argparse.ArgumentParser(prog="lmini demo", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", choices=TINY, help="a tiny LLaVA-Mini config (random weights)")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="a LLaVA-Mini checkpoint folder instead of --config (e.g. llava_mini.tiny_checkpoint's); "
                        "the LLaVA-v1.5 column gets random weights of its shapes")  # fmt: skip
    p.add_argument("--frames", type=positive_int, default=16, help="frames of the synthetic video")
    p.add_argument("--text-tokens", type=_prompt_length, default=12, help="prompt length (the placeholder included)")
    p.add_argument("--new-tokens", type=positive_int, default=8, help="tokens to generate greedily")
    add_model_options(p)
    p.add_argument("--seed", type=int, default=0)
    if argv and argv[0] == "--":
        argv = argv[1:]
    args = p.parse_args(argv)

    device = torch.device(resolve_device(args.device))
    dtype = getattr(torch, args.dtype)
    if args.model is not None:
        from lmini_tools.chat import read_checkpoint_config

        cfg = read_checkpoint_config(Path(args.model))
        if not cfg.is_mini:
            raise UsageError(f"--model {args.model}: not a LLaVA-Mini checkpoint (config.json has no compressor_size)")
    else:
        cfg = LlavaMiniConfig.from_name(args.config)
    base_cfg = cfg.replace(
        name=cfg.name + " (LLaVA-v1.5)", compressor_size=None, prefusion_layers=0, resolution_ratio=1
    )

    torch.manual_seed(args.seed)
    models = {}
    for label, c in (("LLaVA-v1.5", base_cfg), ("LLaVA-Mini", cfg)):
        if label == "LLaVA-Mini" and args.model is not None:
            model = LlavaMini.from_pretrained(args.model, c, dtype=dtype, device=str(device), backend=args.backend)
        else:
            model = LlavaMini(c, backend=args.backend).init_random_weights(args.seed)
        models[label] = model.to(device=device, dtype=dtype).eval()

    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(1, cfg.text.vocab_size, (1, args.text_tokens), generator=gen)
    ids[0, 1] = IMAGE_TOKEN_INDEX
    ids = ids.to(device)
    full = synthetic_image(cfg)[None].to(device)  # (1, parts, 3, S, S)
    video = torch.stack([synthetic_image(cfg, t) for t in range(args.frames)])[None].to(device)
    inputs = {"image": full, f"video ({args.frames} frames)": video}

    results = {}
    for name, imgs in inputs.items():
        for label, model in models.items():
            x = imgs if label == "LLaVA-Mini" else imgs[..., -1:, :, :, :]  # baseline: global view only
            _run(model, ids, x, args.new_tokens)  # warm-up
            results[(name, label)] = _run(model, ids, x, args.new_tokens)

    cols = [(n, label) for n in inputs for label in models]
    print(f"lmini demo: config {cfg.name} (C={cfg.compressor_size}, {cfg.prefusion_layers} pre-fusion layers,")
    weights = f"weights from {args.model}" if args.model else f"random weights (seed {args.seed})"
    print(f"  resolution_ratio={cfg.resolution_ratio}), {weights}, {device.type}, {args.dtype}")
    for op in ("compress", "prefusion_attention"):
        print(f"  {op}: backend={args.backend}, available here: {', '.join(lmini_kernels.available_backends(op))}")
    w, first = 13, 22
    rule = "-" * (first + w * len(cols))
    print()
    print(f"{'':{first}}" + "".join(f"{n:^{w * len(models)}}" for n in inputs))
    print(f"{'stage (ms)':{first}}" + "".join(f"{label:>{w}}" for _, label in cols))
    print(rule)
    for stage in STAGES:
        cells = [results[c][0].get(stage) for c in cols]
        print(f"{stage:{first}}" + "".join(f"{ms:>{w}.2f}" if ms is not None else f"{'-':>{w}}" for ms in cells))
    print(rule)
    print(f"{'vision tokens -> LLM':{first}}" + "".join(f"{results[c][1]:>{w}}" for c in cols))
    if cfg.resolution_ratio > 1:
        print("(the LLaVA-v1.5 columns read only the global view of each image)")
    print()
    for c in cols:
        print(f"generated ({c[0]}, {c[1]}): {results[c][2]}")
    print()
    print(f"vision tokens per image reaching the LLM at full size ({args.frames}-frame video in brackets):")
    for name in REAL:
        rc = LlavaMiniConfig.from_name(name)
        note = f"C={rc.compressor_size} ({rc.compressor_size}x{rc.compressor_size})" if rc.is_mini else "no compression"
        frames = LlavaMini.llm_vision_tokens(rc, args.frames)
        print(f"  {name:26} {rc.llm_tokens_per_image:>5}  [{frames:>5}]  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
