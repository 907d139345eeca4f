"""A video sharded over gloo processes (llava_mini.distributed) against one process.

Each test spawns one process group (2 or 3 ranks on a FileStore in a temporary directory,
a timeout on the group and on the join) that runs a list of cases; the ranks save what they
got and the test compares it with the single-process ``encode_multimodal`` of the same video.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from model_helpers import build, make_ids

from llava_mini.distributed import DistributedVideoError, encode_video_distributed, frame_share

GROUP_TIMEOUT_S = 30  # a collective left waiting fails within this
JOIN_TIMEOUT_S = 120  # the whole group, every case


def _inputs(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The case's video (B, T, parts, 3, S, S) and question, from its seed (same in every process)."""
    cfg = build(case["config"]).config
    gen = torch.Generator().manual_seed(case["seed"])
    s = cfg.vision.image_size
    video = torch.randn(case["batch"], case["frames"], cfg.image_parts, 3, s, s, generator=gen)
    ids = make_ids(gen, case["batch"], case["text"], cfg.text.vocab_size, pad_tail=1)
    return video, ids


def _model(case: dict):
    return build(case["config"], backend=case["backend"]).to(getattr(torch, case.get("dtype", "float32")))


def _my_video(case: dict, video: torch.Tensor, rank: int, world: int):
    """What this rank passes: the whole tensor, or a stream of its own frames (2 per chunk)."""
    if case.get("shares") is None and not case.get("stream"):
        return video
    if case.get("shares") is None:
        share = frame_share(video.shape[1], rank, world)
    else:
        start = sum(case["shares"][:rank])
        share = range(start, start + case["shares"][rank])

    def chunks():
        for t in range(share.start, share.stop, 2):
            if rank == case.get("fail_rank") and t > share.start:
                raise RuntimeError(f"boom on rank {rank}")
            yield video[:, t : min(t + 2, share.stop)]

    return chunks()


def _worker(rank: int, world: int, store: str, out: str, cases: list[dict]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=GROUP_TIMEOUT_S)
    )
    try:
        for case in cases:
            model = _model(case)
            video, ids = _inputs(case)
            if rank == case.get("bad_text_rank"):
                ids = ids[:, :-1]
            try:
                dst = case.get("rank_dst", {}).get(rank, case["dst"])
                got = encode_video_distributed(
                    model, ids, _my_video(case, video, rank, world), dst=dst, prefusion=case["prefusion"]
                )
                result = {"value": got}
            except Exception as exc:
                result = {"error": type(exc).__name__, "msg": str(exc), "cause": repr(exc.__cause__)}
            torch.save(result, Path(out) / f"{case['id']}-{rank}.pt")
    except BaseException:
        (Path(out) / f"crash-{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _run_group(world: int, cases: list[dict], tmp_path: Path) -> dict[tuple[str, int], dict]:
    """Spawn ``world`` ranks over ``cases``; every rank's saved result by (case id, rank)."""
    ctx = mp.get_context("spawn")
    store, out = str(tmp_path / "store"), tmp_path / "out"
    out.mkdir()
    procs = [ctx.Process(target=_worker, args=(r, world, store, str(out), cases)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    crashes = {f.name: f.read_text() for f in out.glob("crash-*.txt")}
    assert not hung, f"ranks {hung} still running after {JOIN_TIMEOUT_S} s; crashes: {crashes}"
    assert all(p.exitcode == 0 for p in procs), f"exit codes {[p.exitcode for p in procs]}; {crashes}"
    return {(c["id"], r): torch.load(out / f"{c['id']}-{r}.pt") for c in cases for r in range(world)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _case(id_: str, frames: int, **kw: object) -> dict:
    case = dict(id=id_, frames=frames, config="tiny-c2", backend="auto", prefusion="auto", batch=2, text=5, dst=0)
    case.update(kw)
    case.setdefault("seed", int(torch.randint(0, 2**31 - 1, (1,))))  # fresh inputs every run; in every message
    return case


def _check_matches_single_process(cases: list[dict], results: dict, world: int) -> None:
    for case in cases:
        if any(case.get(k) is not None for k in ("fail_rank", "bad_text_rank", "rank_dst")):
            continue
        model = _model(case)
        video, ids = _inputs(case)
        with torch.no_grad():
            tokens, text = model.encode_multimodal(ids, video, prefusion=case["prefusion"])
        holders = range(world) if case["dst"] is None else [case["dst"]]
        for r in range(world):
            res = results[(case["id"], r)]
            assert "error" not in res, (case, r, res)
            if r not in holders:
                assert res["value"] is None, (case["id"], r)
                continue
            got_tokens, got_text = res["value"]
            assert got_tokens.shape == tokens.shape and got_text.shape == text.shape, case["id"]
            assert got_tokens.dtype == tokens.dtype and got_text.dtype == text.dtype
            # the frames' tokens are the same computation; bf16 text: the fp32 sum's order can show after the cast
            tol = 1e-6 if tokens.dtype == torch.float32 else 4e-3
            assert _rel(got_tokens, tokens) <= 1e-6, (case, r, _rel(got_tokens, tokens))
            assert _rel(got_text, text) <= tol, (case, r, _rel(got_text, text))


def test_frame_share_tiles_the_video() -> None:
    for frames in (0, 1, 5, 17):
        for world in (1, 2, 3, 8):
            shares = [frame_share(frames, r, world) for r in range(world)]
            assert [f for s in shares for f in s] == list(range(frames))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="rank"):
        frame_share(4, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        frame_share(4, 0, 0)


def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    cases = [
        _case("f1", 1),  # one rank has no frame
        _case("f5", 5, dst=None),  # uneven 3 + 2, the answer on every rank
        _case("f17", 17, stream=True),  # 9 + 8 in chunks of 2
        _case("hd", 3, config="tiny-hd"),
        _case("official", 5, backend="reference", prefusion="official", dst=1),
        _case("lopsided", 5, shares=[5, 0], config="tiny"),  # a rank's stream may be empty
        _case("bf16", 5, backend="reference", prefusion="official", dtype="bfloat16", dst=None),  # a 2-byte dtype
        _case("bad-dst", 3, rank_dst={1: 5}),  # rank 1 alone passes a bad dst
        _case("mixed-dst", 3, rank_dst={1: None}),  # rank 0 gathers to 0, rank 1 to everyone
        _case("after", 2),
    ]
    results = _run_group(2, cases, tmp_path)
    _check_matches_single_process(cases, results, 2)
    for r in range(2):
        bad, mixed = results[("bad-dst", r)], results[("mixed-dst", r)]
        assert bad.get("error") == DistributedVideoError.__name__ and "rank(s) [1]" in bad["msg"], (r, bad)
        assert r == 0 or "dst: expected None or a group rank in [0, 2), got 5" in bad["msg"], bad
        assert mixed.get("error") == "ValueError" and "same dst" in mixed["msg"], (r, mixed)


def test_three_ranks_uneven_fewer_frames_and_a_failing_rank(tmp_path: Path) -> None:
    cases = [
        _case("f1", 1, dst=None),  # more ranks than frames
        _case("f2", 2, config="tiny-hd", dst=2),
        _case("f5", 5, shares=[1, 0, 4], dst=None),
        _case("f17", 17),  # 6 + 6 + 5
        _case("fail", 12, stream=True, fail_rank=1),  # raises in its second chunk
        _case("after-fail", 4, stream=True),  # the group is still usable
        _case("bad-text", 3, bad_text_rank=2),
    ]
    results = _run_group(3, cases, tmp_path)
    _check_matches_single_process(cases, results, 3)
    for r in range(3):
        res = results[("fail", r)]
        assert res.get("error") == DistributedVideoError.__name__, (r, res)
        assert "rank(s) [1]" in res["msg"]
        if r == 1:
            assert "boom on rank 1" in res["msg"] and "boom" in res["cause"]
        bad = results[("bad-text", r)]
        assert bad.get("error") == "ValueError" and "text_len" in bad["msg"], (r, bad)


def test_needs_an_initialised_group() -> None:
    if dist.is_initialized():  # pragma: no cover - another test left a group behind
        pytest.skip("a process group is already initialised in this process")
    m = build("tiny")
    with pytest.raises(RuntimeError, match="init_process_group"):
        encode_video_distributed(m, torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 1, 1, 3, 28, 28))
