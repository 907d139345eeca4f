"""A long video across processes with ``torch.distributed``: frames sharded, one answer.

Until the mean over frames, LLaVA-Mini's frames are independent: each frame runs CLIP, the
compressor, the projector and the pre-fusion against the shared question on its own. So
each rank of a process group takes a contiguous share of the frames
(:func:`frame_share`), computes its share's compressed tokens and the float32 sum of its
share's fused text (:meth:`LlavaMini.encode_video_sum`), and the shares are combined in frame
order:

1. one small int64 all-gather of every rank's status (failed?, frames, token rows, batch,
   text length, hidden, declared video length, dst, token dtype), so that a rank whose local work raised makes
   every rank raise (before any data collective, so none is left waiting), mismatched inputs
   are an error everywhere, and the per-rank sizes of the uneven shares are known;
2. the token rows, padded to the largest share, gathered (as raw bytes, so any dtype goes over
   any backend) and trimmed back per rank, concatenated in rank order = frame order;
3. the float32 sums reduced (sum), divided by the total frame count and cast back.

The result (``tokens (B, T * C * C, hidden)``, ``fused text (B, L, hidden)``) is the
single-process :meth:`LlavaMini.encode_multimodal` of the whole video, up to the order of
the float32 additions; the LLM then runs on one rank. Ranks with no frame (more ranks than
frames) still take part in every collective.

Any initialised process group works (gloo on CPU, NCCL on GPUs, launched by ``torchrun``):
the collectives run on the group's device (CUDA for NCCL, else the model's device where the
backend supports it, else CPU). Give ``init_process_group`` a ``timeout``: a rank that
*raises* is handled here, but a rank that dies or hangs leaves the others waiting until that
timeout (with NCCL keep ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` on, its default, so the timeout
aborts instead of hanging).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
import torch.distributed as dist

from lmini_kernels.checks import check_int

from .model import LlavaMini

__all__ = ["frame_share", "encode_video_distributed", "DistributedVideoError"]

#: the status vector every rank sends first (one int64 each)
_STATUS = ("failed", "frames", "rows", "batch", "text_len", "hidden", "declared_frames", "dst", "dtype")
#: the token dtypes the status can name (its index; -1: a rank with no rows, which takes the
#: others'; -2: a dtype not in this list)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class DistributedVideoError(RuntimeError):
    """Another rank's local video work raised (its own traceback is on that rank)."""


def frame_share(frames: int, rank: int, world_size: int) -> range:
    """The contiguous frames of ``rank`` out of ``frames`` split over ``world_size`` ranks.

    The first ``frames % world_size`` ranks get one frame more; with more ranks than frames
    the last ranks get an empty range. The shares, in rank order, tile ``range(frames)``."""
    check_int("frames", frames, minimum=0)
    check_int("world_size", world_size)
    check_int("rank", rank, minimum=0, maximum=world_size - 1)
    base, extra = divmod(frames, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def _comm_device(group: dist.ProcessGroup | None, model_device: torch.device) -> torch.device:
    """Where the group's collectives run: CUDA for NCCL, the model's device when the backend
    can take it (gloo: CPU), else CPU."""
    backend = str(dist.get_backend(group)).lower()
    if model_device.type == "cuda" and "nccl" in backend:
        return model_device
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    if model_device.type == "cpu" or "gloo" in backend:
        return torch.device("cpu")
    return model_device  # another backend (mpi, xccl, ...): trust it with the model's device


def _local_work(
    model: LlavaMini,
    input_ids: torch.Tensor,
    video: torch.Tensor | Iterable[torch.Tensor],
    rank: int,
    world: int,
    prefusion: str,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """This rank's (tokens, float32 text sum, frames, declared video length or -1)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids: expected a tensor (B, L), got {got}")
    declared = -1
    if isinstance(video, torch.Tensor):
        if video.dim() != 6:
            raise ValueError(f"video: expected a tensor (B, T, parts, 3, H, W), got {tuple(video.shape)}")
        declared = video.shape[1]
        share = frame_share(declared, rank, world)
        video = video[:, share.start : share.stop]
    elif not isinstance(video, Iterable):
        raise TypeError(f"video: expected a tensor (B, T, parts, 3, H, W) or an iterable of them, got {type(video)}")
    tokens, text_sum, frames = model.encode_video_sum(input_ids, video, prefusion=prefusion)
    return tokens, text_sum, frames, declared


def _check_status(status: torch.Tensor, rank: int, error: BaseException | None) -> None:
    """Raise on every rank if one failed or the ranks' inputs disagree (status (world, len(_STATUS)))."""
    failed = [r for r in range(status.shape[0]) if status[r, 0]]
    if failed:
        msg = f"encode_video_distributed: local video work raised on rank(s) {failed} (see their tracebacks)"
        if error is not None:
            raise DistributedVideoError(f"{msg}; rank {rank}: {type(error).__name__}: {error}") from error
        raise DistributedVideoError(msg)
    for col in ("batch", "text_len", "hidden", "declared_frames", "dst"):
        values = status[:, _STATUS.index(col)].tolist()
        if len(set(values)) > 1:
            what = {"declared_frames": "video.shape[1] (-1: a stream of chunks)", "dst": "dst (-1: None)"}.get(col, col)
            raise ValueError(f"encode_video_distributed: every rank must pass the same {what}; got {values} by rank")
    codes = status[:, _STATUS.index("dtype")].tolist()
    kinds = {k for k in codes if k >= 0}
    if len(kinds) > 1 or -2 in codes:
        names = ["none" if k < 0 else str(_DTYPES[k]) for k in status[:, _STATUS.index("dtype")].tolist()]
        raise ValueError(
            f"encode_video_distributed: the ranks' tokens must share one of {_DTYPES}; got {names} by rank"
        )
    if int(status[:, 1].sum()) == 0:
        raise ValueError("encode_video_distributed: the video has no frame on any rank")


def _gather_rows(
    tokens: torch.Tensor, rows: list[int], dst: int | None, group: dist.ProcessGroup | None, device: torch.device
) -> torch.Tensor | None:
    """Concatenate every rank's ``tokens`` (B, rows[r], hidden) along dim 1, in rank order,
    on ``dst`` (a group rank) or on every rank (``dst=None``); None on the other ranks.
    The rows are padded to the largest share and sent as bytes (any dtype over any backend)."""
    b, _, h = tokens.shape
    pad = max(rows)
    buf = torch.zeros(b, pad, h, dtype=tokens.dtype, device=device)
    buf[:, : tokens.shape[1]] = tokens
    raw = buf.view(torch.uint8)  # (b, pad, h * itemsize): a copy-free byte view of the padded rows
    world = len(rows)
    rank = dist.get_rank(group)
    if dst is None or rank == dst:
        parts = [torch.empty_like(raw) for _ in range(world)]
    else:
        parts = None
    if dst is None:
        dist.all_gather(parts, raw, group=group)
    else:
        dist.gather(raw, parts, dst=dist.get_global_rank(group, dst) if group is not None else dst, group=group)
    if parts is None:
        return None
    return torch.cat([p.view(tokens.dtype)[:, :n] for p, n in zip(parts, rows, strict=True)], dim=1)


@torch.no_grad()
def encode_video_distributed(
    model: LlavaMini,
    input_ids: torch.Tensor,
    video: torch.Tensor | Iterable[torch.Tensor],
    *,
    group: dist.ProcessGroup | None = None,
    dst: int | None = 0,
    prefusion: str = "auto",
    timings: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The video encoding of :meth:`LlavaMini.encode_multimodal`, its frames sharded over the
    ranks of ``group`` (default: the world), combined in frame order.

    Every rank calls this with the same model weights and the same ``input_ids`` (B, L) (the
    question). ``video`` is either the whole video (B, T, parts, 3, H, W) on every rank (each
    rank takes :func:`frame_share` of it) or an iterable of this rank's own consecutive
    frames as chunks (B, T_c, parts, 3, H, W), rank r's frames before rank r+1's (a
    generator may decode them lazily; a rank may have none).

    Returns, on group rank ``dst`` (or on every rank with ``dst=None``), (vision tokens
    (B, T * V, hidden) in frame order, text features (B, L, hidden): the float32 sum over all
    T frames / T, cast to the text dtype), and None on the other ranks. ``prefusion`` as in
    :meth:`LlavaMini.encode_images_mini`. ``timings``, when given, receives ``local_s`` (this
    rank's own frames), ``comm_s`` (the collectives), ``local_frames`` and ``frames``.

    If the local work raises on any rank, every rank raises (:class:`DistributedVideoError`,
    chained to the original error on the rank where it happened) and the group stays usable;
    ranks disagreeing on B, L, hidden, the video length, ``dst`` or the tokens' dtype raise
    ValueError on every rank.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("encode_video_distributed: call torch.distributed.init_process_group first")
    if not isinstance(model, LlavaMini):
        raise TypeError(f"model: expected a LlavaMini, got {type(model).__name__}")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    device = _comm_device(group, model.device)

    t0 = time.perf_counter()
    error: BaseException | None = None
    hidden = model.config.text.hidden_size
    try:
        if dst is not None and (not isinstance(dst, int) or isinstance(dst, bool) or not 0 <= dst < world):
            raise ValueError(f"dst: expected None or a group rank in [0, {world}), got {dst!r}")
        tokens, text_sum, frames, declared = _local_work(model, input_ids, video, rank, world, prefusion)
    except Exception as exc:  # reported to every rank below, then re-raised here
        error = exc
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    t1 = time.perf_counter()

    if error is None:
        kind = -1 if not tokens.shape[1] else _DTYPES.index(tokens.dtype) if tokens.dtype in _DTYPES else -2
        mine = [0, frames, tokens.shape[1], *input_ids.shape, hidden, declared, -1 if dst is None else dst, kind]
    else:
        mine = [1, 0, 0, -1, -1, hidden, -1, -1, -1]
    status = torch.tensor(mine, dtype=torch.int64, device=device)
    every = [torch.empty_like(status) for _ in range(world)]
    dist.all_gather(every, status, group=group)
    status = torch.stack(every).cpu()
    _check_status(status, rank, error)

    rows = status[:, _STATUS.index("rows")].tolist()
    total_frames = int(status[:, _STATUS.index("frames")].sum())
    kinds = {k for k in status[:, _STATUS.index("dtype")].tolist() if k >= 0}
    if kinds:  # a rank without rows made its empty tokens in some dtype: take the others'
        tokens = tokens.to(_DTYPES[kinds.pop()])
    gathered = _gather_rows(tokens.to(device), rows, dst, group, device)
    text_sum = text_sum.to(device)
    if dst is None:
        dist.all_reduce(text_sum, op=dist.ReduceOp.SUM, group=group)
    else:
        dist.reduce(text_sum, dst=dist.get_global_rank(group, dst) if group is not None else dst, group=group)
    if timings is not None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.update(local_s=t1 - t0, comm_s=time.perf_counter() - t1, local_frames=frames, frames=total_frames)
    if gathered is None:
        return None
    return gathered.to(model.device), model.video_text_mean(text_sum.to(model.device), total_frames)
