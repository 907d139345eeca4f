"""``lmini chat``: ask a LLaVA-Mini checkpoint folder a question about an image or a video.

``lmini chat --model DIR (--image FILE | --video FILE) "question"`` loads the folder
(``config.json`` through :meth:`LlavaMiniConfig.from_hf_config`, the weights through
:meth:`LlavaMini.from_pretrained`, the tokenizer and ``preprocessor_config.json``), builds the
prompt in the official format (:mod:`llava_mini.prompt`: the ``vicuna_v1``, ``llava_v1`` or
``llava_llama_3_1`` template, ``<image>`` as the placeholder id -200, wrapped in ``<im_start>``
/ ``<im_end>`` with ``mm_use_im_start_end``), preprocesses the image
(:class:`llava_mini.preprocess.ImagePreprocessor`) or streams the video's frames in chunks
(:func:`llava_mini.video.stream_video`, fed lazily to the model's chunk-iterable video path),
and prints the answer on stdout as it is generated. Timings go to stderr. Greedy by default;
``--temperature T > 0`` samples (with ``--top-p`` and ``--seed``), as the official
``run_llava_mini.py`` does. ``--compare-official-path`` answers a second time on the official
per-frame pre-fusion path (``prefusion="official"``) and prints both latencies (each path run
once unmeasured first, so that neither pays for loading the kernels).
The official release layout, the vision tower's weights and processor in the folder
``mm_vision_tower`` names, loads from there; ``--vision-tower DIR`` names a local copy in place
of a released config's hub name. No network: everything comes from DIR and the tower folder
(``lmini chat --model $(python -c ...make_tiny_checkpoint...)`` works on a tiny checkpoint, see
the README).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lmini_tools.args import (
    UsageError,
    add_model_options,
    positive_float,
    positive_int,
    resolve_device,
)


def _temperature(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 (0: greedy), got {text}")
    return v


def _top_p(text: str) -> float:
    v = positive_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The ``lmini chat`` argument parser."""
    p = argparse.ArgumentParser(prog="lmini chat", description=__doc__.splitlines()[0])
    p.add_argument("question", help="the question; <image-placeholder> marks where the image goes (else in front)")
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint folder (config.json, weights, tokenizer)")
    media = p.add_mutually_exclusive_group()
    media.add_argument("--image", metavar="FILE", help="an image file (any format Pillow reads)")
    media.add_argument("--video", metavar="FILE", help="a video file (any format PyAV decodes); one frame per second")
    p.add_argument("--max-frames", type=positive_int, default=None, help="at most this many video frames")
    p.add_argument("--chunk-frames", type=positive_int, default=8, help="video frames decoded and encoded per chunk")
    p.add_argument(
        "--dist-timeout",
        type=positive_float,
        default=300.0,
        help="under torchrun: seconds a collective may wait for a rank before every rank fails",
    )
    p.add_argument(
        "--conv-mode",
        default=None,
        choices=("vicuna_v1", "llava_v1", "llava_llama_3_1"),
        help="conversation template (default: llava_llama_3_1 with a Llama 3 tokenizer, else vicuna_v1)",
    )
    p.add_argument(
        "--vision-tower",
        metavar="DIR",
        default=None,
        help="local CLIP folder to use as config.json's mm_vision_tower (e.g. a downloaded copy of the hub tower a "
        "released config names): its size, and its weights and preprocessor_config.json when DIR lacks them",
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--temperature", type=_temperature, default=0.0, help="0: greedy (default); > 0: sample")
    p.add_argument("--top-p", type=_top_p, default=1.0, help="nucleus of the sampling (with --temperature > 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    add_model_options(p)
    p.add_argument("--compare-official-path", action="store_true",
                   help="also answer on the official per-frame pre-fusion path and print both latencies")  # fmt: skip
    return p


def read_checkpoint_config(folder: Path, vision_tower: str | None = None):
    """The :class:`llava_mini.LlavaMiniConfig` of a checkpoint folder's ``config.json`` (with
    ``vision_tower`` in place of its ``mm_vision_tower``); a missing folder or file, bad JSON or
    a bad field is one error naming the file."""
    from llava_mini.config import LlavaMiniConfig, read_json_file

    if not folder.is_dir():
        raise UsageError(f"--model {folder}: not a checkpoint folder (no such directory)")
    path = folder / "config.json"
    if not path.is_file():
        raise UsageError(f"--model {folder}: no config.json")
    try:
        hf = read_json_file(path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        return LlavaMiniConfig.from_hf_config(hf, name=folder.name, vision_tower=vision_tower)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


class _Printer:
    """Prints the decoded answer as tokens arrive: the text added since the last step (decoding
    the whole answer each time, so multi-token characters and spacing come out right)."""

    def __init__(self, tokenizer, eos: set[int], out=sys.stdout) -> None:
        self.tokenizer, self.eos, self.out = tokenizer, eos, out
        self.ids: list[int] = []
        self.shown = ""
        self.ended = False

    def __call__(self, token) -> None:
        t = int(token[0])
        if self.ended or t in self.eos:
            self.ended = True
            return
        self.ids.append(t)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split over tokens: wait for its last byte
            return
        if text.startswith(self.shown):
            self.out.write(text[len(self.shown) :])
            self.out.flush()
            self.shown = text

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        # a decoding that rewrote what was shown (rare) is printed again whole on its own line
        self.out.write(text[len(self.shown) :] if text.startswith(self.shown) else "\n" + text)
        self.out.write("\n")
        self.out.flush()
        return text.strip()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lmini chat``; returns the exit status."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.max_frames is not None and args.video is None:
        raise UsageError("--max-frames: only with --video")

    import torch

    from llava_mini.model import LlavaMini
    from llava_mini.preprocess import ImagePreprocessor
    from llava_mini.prompt import build_prompt, default_template, eos_token_ids, load_tokenizer, tokenizer_image_token
    from llava_mini.video import stream_video

    folder = Path(args.model)
    cfg = read_checkpoint_config(folder, args.vision_tower)
    device = torch.device(resolve_device(args.device))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # under torchrun: the video's frames are sharded over the ranks
        if args.video is None:
            raise UsageError("torchrun: lmini chat shards the frames of a --video over the ranks; give --video FILE")
        if args.compare_official_path:
            raise UsageError("--compare-official-path: run it in one process, not under torchrun")
        from datetime import timedelta

        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=args.dist_timeout)
        )
    rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
    dtype = getattr(torch, args.dtype)
    tok = load_tokenizer(folder)
    template = args.conv_mode or default_template(tok)
    has_media = args.image is not None or args.video is not None
    prompt = build_prompt(args.question, template, tokenizer=tok, image=has_media, im_start_end=cfg.use_im_start_end)
    ids = torch.tensor([tokenizer_image_token(prompt, tok, image=has_media)], device=device)
    eos = eos_token_ids(folder, tok)
    pre = ImagePreprocessor.for_model(cfg, folder)
    if args.image is not None:
        pixels = pre([args.image]).to(device)  # read once: both paths see the same tensor

    def media():
        if args.image is not None:
            return pixels
        if args.video is not None:  # a fresh lazy stream per run; each chunk gets its batch axis
            chunks = stream_video(args.video, pre, chunk_frames=args.chunk_frames, max_frames=args.max_frames)
            return (c[None].to(device) for c in chunks)
        return None

    def encode(path: str):
        """The spliced LLM input on this rank (None on the ranks that only encode frames)."""
        if world == 1:
            return model.prepare_inputs(ids, media(), prefusion=path)
        from llava_mini.distributed import encode_video_distributed, frame_share
        from llava_mini.video import probe_video, sampled_frame_indices

        info = probe_video(args.video)
        share = frame_share(
            len(sampled_frame_indices(info.num_frames, info.fps, max_frames=args.max_frames)), rank, world
        )

        def mine():  # this rank's consecutive frames; every rank decodes, each encodes its own share
            t = 0
            for c in media():
                lo, hi = t, t + c.shape[1]
                t = hi
                a, b = max(lo, share.start), min(hi, share.stop)
                if a < b:
                    yield c[:, a - lo : b - lo]

        enc = encode_video_distributed(model, ids, mine(), dst=0, prefusion=path)
        return None if enc is None else model.prepare_inputs(ids, None, encoded=enc)

    t0 = time.perf_counter()
    model = LlavaMini.from_pretrained(str(folder), cfg, dtype=dtype, device=str(device), backend=args.backend)
    load_ms = (time.perf_counter() - t0) * 1e3
    sample = args.temperature > 0

    def answer(path: str, out, max_new_tokens: int) -> tuple[str, float, float, int]:
        printer = _Printer(tok, set(eos), out)
        gen = torch.Generator(device=device).manual_seed(args.seed) if sample else None
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        start = time.perf_counter()
        mm = encode(path)
        sync()
        encoded = time.perf_counter()
        if mm is None:  # a rank that only encoded its share of the frames
            return "", (encoded - start) * 1e3, 0.0, 0
        model.generate(
            ids,
            inputs=mm,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos or None,
            do_sample=sample,
            temperature=args.temperature if sample else 1.0,
            top_p=args.top_p,
            generator=gen,
            streamer=printer,
        )
        sync()
        done = time.perf_counter()
        return printer.finish(), (encoded - start) * 1e3, (done - encoded) * 1e3, len(printer.ids)

    what = "image" if args.image else "video" if args.video else "text only"
    if world > 1:
        what += f" sharded over {world} ranks ({'nccl' if device.type == 'cuda' else 'gloo'})"
        if rank != 0:  # encode this rank's frames, take part in the collectives, print nothing
            try:
                answer("auto", open(os.devnull, "w"), args.max_new_tokens)  # noqa: SIM115
            finally:
                torch.distributed.destroy_process_group()
            return 0
    print(
        f"lmini chat: {folder.name} ({cfg.num_queries or cfg.vision.num_features} vision tokens per "
        f"{'frame' if args.video else 'image'}), {what}, template {template}, backend {args.backend}, "
        f"{device.type} {args.dtype}, loaded in {load_ms:.0f} ms",
        file=sys.stderr,
    )
    main_label = "official" if args.backend == "reference" else "fused"  # what prefusion="auto" takes
    paths = [("auto", sys.stdout)]
    if args.compare_official_path:
        paths.append(("official", sys.stdout))
    if args.compare_official_path:  # warm both paths up (first calls load kernels), so the latencies compare
        with open(os.devnull, "w") as null:
            for path, _ in paths:
                answer(path, null, 2)
    results = {}
    for path, out in paths:
        if len(paths) > 1:
            out.write(f"[{main_label if path == 'auto' else 'official'} path] ")
        results[path] = answer(path, out, args.max_new_tokens)
        text, enc_ms, gen_ms, n = results[path]
        print(
            f"lmini chat: {main_label if path == 'auto' else 'official'} path: encode (vision, pre-fusion, splice) "
            f"{enc_ms:.1f} ms, {n} tokens in {gen_ms:.1f} ms, total {enc_ms + gen_ms:.1f} ms",
            file=sys.stderr,
        )
    if args.compare_official_path:
        fused, official = results["auto"], results["official"]
        same = "the same answer" if fused[0] == official[0] else "different answers"
        speed = (official[1] + official[2]) / max(fused[1] + fused[2], 1e-9)
        a, b = fused[1] + fused[2], official[1] + official[2]
        line = f"lmini chat: latency {main_label} {a:.1f} ms, official {b:.1f} ms ({speed:.2f}x); {same}"
        if main_label == "official":
            line += " (--backend reference: both runs take the official path; pick another backend to compare)"
        print(line, file=sys.stderr)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
