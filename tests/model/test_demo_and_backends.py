"""Backend pass-through to the library ops, and the `lmini demo` entry point."""

from __future__ import annotations

import pytest
import torch
from conftest import build, make_ids

import lmini_kernels
from lmini_tools import demo


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    for op in ("compress", "prefusion_attention"):
        original = getattr(lmini_kernels, op)

        def wrapper(*args, _op=op, _orig=original, **kwargs):
            calls.append((_op, kwargs.get("backend", "<missing>")))
            return _orig(*args, **kwargs)

        monkeypatch.setattr(lmini_kernels, op, wrapper)
    return calls


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_backend_reaches_both_ops(backend: str, monkeypatch: pytest.MonkeyPatch, gen: torch.Generator) -> None:
    m = build("tiny-hd", backend=backend)
    calls = _spy(monkeypatch)
    ids = make_ids(gen, 1, 5, m.config.text.vocab_size)
    video = torch.randn(1, 3, 5, 3, 28, 28, generator=gen)
    m.generate(ids, video, max_new_tokens=3)
    ops = [op for op, _ in calls]
    if backend == "reference":  # the official loop: one call per frame
        assert ops.count("compress") == 3  # HD: one re-tiled grid per frame
        assert ops.count("prefusion_attention") == 3 * m.config.prefusion_layers  # not in the LLM
    else:  # FusedPreFusion: the 3 frames form one chunk, one batched call per op and layer
        assert ops.count("compress") == 1
        assert ops.count("prefusion_attention") == m.config.prefusion_layers
    assert {b for _, b in calls} == {backend}


@pytest.mark.parametrize("config", ["tiny", "tiny-c2", "tiny-hd", "tiny-llama3"])
def test_fused_prefusion_path_matches_reference(config: str, gen: torch.Generator) -> None:
    """backend != "reference" takes FusedPreFusion (pruned, batched frames in chunks of 4 on the
    CPU); the kept rows equal the official per-frame computation, padding included."""
    ref, fast = build(config, backend="reference"), build(config, backend="auto")
    assert fast.video_chunk_frames == 4
    ids = make_ids(gen, 2, 7, ref.config.text.vocab_size, pad_tail=2)
    parts = ref.config.resolution_ratio**2 + 1 if ref.config.resolution_ratio > 1 else 1
    video = torch.randn(2, 6, parts, 3, 28, 28, generator=gen)  # 6 frames: chunks of 4 and 2
    with torch.no_grad():
        for images in (video[:, 0], video):
            (va, ta), (vb, tb) = ref.encode_multimodal(ids, images), fast.encode_multimodal(ids, images)
            assert va.shape == vb.shape and ta.shape == tb.shape
            assert (va - vb).norm() <= 1e-5 * va.norm()
            assert (ta - tb).norm() <= 1e-5 * ta.norm()


def test_reference_and_auto_agree(gen: torch.Generator) -> None:
    ref, auto = build("tiny-c2", backend="reference"), build("tiny-c2", backend="auto")
    ids = make_ids(gen, 2, 6, ref.config.text.vocab_size, pad_tail=1)
    images = torch.randn(2, 1, 3, 28, 28, generator=gen)
    with torch.no_grad():
        a, b = ref(ids, images), auto(ids, images)
    assert (a - b).abs().max() < 1e-4


def test_demo_main_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--frames", "4", "--new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    for stage in demo.STAGES:
        assert stage in out
    row = next(line for line in out.splitlines() if line.startswith("vision tokens -> LLM"))
    assert row.split()[-4:] == ["16", "1", "64", "4"]  # tiny: 4x4 patches vs C*C = 1, per frame
    # the stages that run on the default (fused) path are timed: LLaVA-Mini columns have pre-fusion
    prefusion = next(line for line in out.splitlines() if line.startswith("pre-fusion")).split()[1:]
    assert prefusion[0] == "-" and prefusion[2] == "-" and float(prefusion[1]) > 0 and float(prefusion[3]) > 0
    real = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  llava")}
    assert real["llava-v1.5-7b"] == "576" and real["llava-mini-vicuna-7b"] == "1"
    assert real["llava-mini-hd-vicuna-7b"] == "64"


def test_demo_on_a_checkpoint_folder(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from llava_mini.tiny_checkpoint import make_tiny_checkpoint
    from lmini_tools.cli import main as lmini_main

    def generated(argv: list[str]) -> tuple[str, dict[str, str]]:
        assert demo.main([*argv, "--frames", "2", "--new-tokens", "4"]) == 0
        out = capsys.readouterr().out
        rows = [line.split(":") for line in out.splitlines() if line.startswith("generated")]
        return out, {r[0]: r[1] for r in rows}

    folder = make_tiny_checkpoint(tmp_path / "c2", "tiny-c2", seed=3, std=0.3)
    out, loaded = generated(["--model", str(folder)])
    assert f"weights from {folder}" in out
    row = next(line for line in out.splitlines() if line.startswith("vision tokens -> LLM"))
    assert row.split()[-4:] == ["16", "4", "32", "8"]  # the folder's C = 2
    _, named = generated(["--config", "tiny-c2"])
    mini = [k for k in loaded if "LLaVA-Mini" in k]
    assert len(mini) == 2 and any(loaded[k] != named[k] for k in mini)  # the folder's weights, not random ones
    assert all(loaded[k] == named[k] for k in loaded if k not in mini)  # the baseline: random, same seed
    base = make_tiny_checkpoint(tmp_path / "base", "tiny-baseline")
    assert lmini_main(["demo", "--model", str(base)]) == 2
    assert "not a LLaVA-Mini checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [(["--backend", "foo"], "invalid choice"), (["--frames", "0"], "positive integer"),
     (["--text-tokens", "1"], "at least 2"), (["--device", "tpu"], "invalid choice")],
)  # fmt: skip
def test_demo_bad_arguments_exit_2_with_one_line(argv, words, capsys: pytest.CaptureFixture[str]) -> None:
    from lmini_tools.cli import main as lmini_main

    with pytest.raises(SystemExit) as exc:
        lmini_main(["demo", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1] and "Traceback" not in "\n".join(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --device cuda is valid here")
def test_demo_device_cuda_without_gpu_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from lmini_tools.cli import main as lmini_main

    assert lmini_main(["demo", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: no CUDA GPU" in err[0]


def test_demo_hd_and_dash_dash(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--", "--config", "tiny-hd", "--frames", "2", "--new-tokens", "2"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("vision tokens -> LLM"))
    assert row.split()[-4:] == ["16", "4", "32", "8"]


def test_synthetic_hd_split_matches_official_crop_order() -> None:
    cfg = build("tiny-hd").config
    parts = demo.synthetic_image(cfg)
    assert parts.shape == (5, 3, 28, 28)
    big = torch.cat([torch.cat([parts[0], parts[1]], dim=2), torch.cat([parts[2], parts[3]], dim=2)], dim=1)
    full = demo.synthetic_image(cfg.replace(resolution_ratio=1, compressor_size=2))
    assert big.shape == (3, 56, 56) and full.shape == (1, 3, 28, 28)
    assert (parts[4] - torch.nn.functional.interpolate(big[None], size=(28, 28), mode="bicubic")[0]).abs().max() < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_half_precision_end_to_end(dtype: torch.dtype, gen: torch.Generator) -> None:
    ref = build("tiny-hd", backend="reference").cuda()
    fast = build("tiny-hd", backend="auto").to("cuda", dtype)
    ids = make_ids(gen, 2, 7, ref.config.text.vocab_size, pad_tail=2).cuda()
    video = torch.randn(2, 3, 5, 3, 28, 28, generator=gen).cuda()
    with torch.no_grad():
        a, b = ref(ids, video), fast(ids, video)
    assert b.dtype == dtype
    assert (a - b.float()).abs().max() < 0.05 * max(1.0, a.abs().max().item())
    assert fast.generate(ids, video, max_new_tokens=4).shape == (2, 4)
    assert demo.main(["--device", "cuda", "--dtype", str(dtype).removeprefix("torch."), "--frames", "2"]) == 0
