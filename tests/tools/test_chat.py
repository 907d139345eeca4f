"""``lmini chat`` end to end on tiny checkpoint folders, as a subprocess: a generated PNG and a
PyAV-encoded MP4, the answer checked against the library run in this process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

from llava_mini import LlavaMini, LlavaMiniConfig  # noqa: E402
from llava_mini.preprocess import ImagePreprocessor  # noqa: E402
from llava_mini.prompt import (  # noqa: E402
    build_prompt,
    default_template,
    eos_token_ids,
    load_tokenizer,
    tokenizer_image_token,
)
from llava_mini.tiny_checkpoint import make_tiny_checkpoint  # noqa: E402
from llava_mini.video import load_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STD = 0.3


def chat(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python")])}
    return subprocess.run([sys.executable, "-m", "lmini_tools.cli", "chat", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("chat")
    # a fixed seed: the EOS check below needs an answer of more than 3 tokens, which a random
    # image does not always give (seen in CI: a 2-token answer)
    rng = np.random.default_rng(1)
    png = d / "a.png"
    Image.fromarray(rng.integers(0, 256, (37, 51, 3), dtype=np.uint8)).save(png)  # odd, non-square
    mp4 = d / "v.mp4"
    with av.open(str(mp4), "w") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for _ in range(13):  # 3.25 s at 4 fps: 3 sampled frames
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), format="rgb24")
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return {
        "png": png,
        "mp4": mp4,
        # std 0.3: answers that change with the pixels (at 0.02 the long prompt decides them)
        "tiny": make_tiny_checkpoint(d / "tiny", "tiny", seed=5, std=STD),
        "tiny-llama3": make_tiny_checkpoint(d / "tiny-llama3", "tiny-llama3", seed=6, std=STD),
    }


def expected(folder: Path, name: str, seed: int, question: str, pixels: torch.Tensor, new: int, **kw):
    """The answer of the library itself, built here step by step: (text, token ids)."""
    tok = load_tokenizer(folder)
    ids = torch.tensor([tokenizer_image_token(build_prompt(question, default_template(tok), tokenizer=tok), tok)])
    model = LlavaMini(LlavaMiniConfig.from_name(name)).init_random_weights(seed, STD).eval()
    eos = eos_token_ids(folder, tok)
    out = model.generate(ids, pixels, max_new_tokens=new, eos_token_id=eos, **kw)[0].tolist()
    end = next((i for i, t in enumerate(out) if t in eos), len(out))
    return tok.decode(out[:end], skip_special_tokens=True).strip(), out[:end]


def test_image_answer_and_official_path(media, tmp_path) -> None:
    folder = media["tiny"]
    q = "What is in the image?"
    out = chat("--model", str(folder), "--image", str(media["png"]), q, "--max-new-tokens", "10",
               "--compare-official-path")  # fmt: skip
    assert out.returncode == 0, out.stderr
    pixels = ImagePreprocessor.for_model(LlavaMiniConfig.from_name("tiny"), folder)([media["png"]])
    want, ids = expected(folder, "tiny", 5, q, pixels, 10)
    assert len(ids) > 3
    assert want != expected(folder, "tiny", 5, q, torch.randn_like(pixels), 10)[0]  # the pixels matter
    lines = out.stdout.splitlines()
    assert [line.strip() for line in lines] == [f"[fused path] {want}".strip(), f"[official path] {want}".strip()]
    assert "fused path: encode" in out.stderr and "official path: encode" in out.stderr
    assert "latency fused" in out.stderr and "the same answer" in out.stderr
    # a second end-of-sequence id in generation_config.json (as Llama 3.1 lists three) ends the answer there
    stop = tmp_path / "stop"
    shutil.copytree(folder, stop)
    eos = load_tokenizer(folder).eos_token_id
    (stop / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, ids[3]]}))
    out = chat("--model", str(stop), "--image", str(media["png"]), q, "--max-new-tokens", "10")
    assert out.returncode == 0, out.stderr
    first = ids.index(ids[3])
    assert out.stdout.strip() == load_tokenizer(folder).decode(ids[:first], skip_special_tokens=True).strip()


def test_release_layout_with_the_tower_folder_given(media, tmp_path) -> None:
    """The official release layout: the tower's weights and processor in their own folder, the
    config naming the hub tower; ``--vision-tower DIR`` gives the folder and the answer is the
    all-in-one checkpoint's; without it, one line naming both places looked at."""
    tower = tmp_path / "tower"
    folder = make_tiny_checkpoint(tmp_path / "release", "tiny", seed=5, std=STD, vision_tower_dir=tower)
    hf = json.loads((folder / "config.json").read_text())
    hf["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"  # as released: a hub name
    del hf["mm_hidden_size"]  # (1024 in the release; the tiny tower is 32 wide)
    (folder / "config.json").write_text(json.dumps(hf))
    q = "What is in the image?"
    out = chat("--model", str(folder), "--vision-tower", str(tower), "--image", str(media["png"]), q,
               "--max-new-tokens", "10")  # fmt: skip
    assert out.returncode == 0, out.stderr
    whole = chat("--model", str(media["tiny"]), "--image", str(media["png"]), q, "--max-new-tokens", "10")
    assert whole.returncode == 0, whole.stderr
    assert out.stdout.strip() == whole.stdout.strip() and out.stdout.strip()
    bare = chat("--model", str(folder), "--image", str(media["png"]), q, "--max-new-tokens", "10")
    assert bare.returncode == 2 and "Traceback" not in bare.stderr
    last = bare.stderr.strip().splitlines()[-1]
    assert f"the checkpoint {folder} has no model.vision_tower.* keys" in last and "--vision-tower" in last


def test_video_streamed_in_chunks_with_sampling(media) -> None:
    folder = media["tiny-llama3"]
    q = "What happens in the video?"
    args = ("--model", str(folder), "--video", str(media["mp4"]), q, "--max-new-tokens", "8",
            "--chunk-frames", "2", "--temperature", "0.9", "--top-p", "0.95", "--seed", "11")  # fmt: skip
    out = chat(*args)
    assert out.returncode == 0, out.stderr
    cfg = LlavaMiniConfig.from_name("tiny-llama3")
    video = load_video(media["mp4"], ImagePreprocessor.for_model(cfg, folder))
    assert video.shape[1] == 3
    gen = torch.Generator().manual_seed(11)
    sampled = {"do_sample": True, "temperature": 0.9, "top_p": 0.95}
    want, _ = expected(folder, "tiny-llama3", 6, q, video, 8, generator=gen, **sampled)
    gen.manual_seed(11)
    assert (
        want != expected(folder, "tiny-llama3", 6, q, video[:, :2], 8, generator=gen, **sampled)[0]
    )  # every frame counts
    assert out.stdout.strip() == want
    assert "template llava_llama_3_1" in out.stderr and "video" in out.stderr


def test_user_errors_are_one_line_exit_2(media, tmp_path, capsys) -> None:
    from lmini_tools.cli import main  # in process: the exit status and the one line, as the subprocess would give

    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(media["tiny"], no_tok)
    (no_tok / "tokenizer.json").unlink()
    cases = [
        (("--model", str(tmp_path / "missing"), "--image", str(media["png"]), "Q"), "not a checkpoint folder"),
        (("--model", str(no_tok), "--image", str(media["png"]), "Q"), "no tokenizer files"),
        (("--model", str(media["tiny"]), "<image> Q"), "no image or video is given"),
        (("--model", str(media["tiny"]), "--image", str(tmp_path / "none.png"), "Q"), "none.png"),
        (("--model", str(media["tiny"]), "--image", "a", "--video", "b", "Q"), "not allowed with argument"),
        (("--model", str(media["tiny"]), "--top-p", "1.5", "Q"), "--top-p"),
        (("--model", str(media["tiny"]), "--max-frames", "2", "Q"), "--max-frames: only with --video"),
    ]
    for args, words in cases:
        try:
            rc = main(["chat", *args])
        except SystemExit as e:  # argparse's own errors
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2, (args, err)
        assert "Traceback" not in err
        assert words in err.strip().splitlines()[-1], (args, err)


class _ByteTokenizer:
    """Token i = byte i; a split UTF-8 character decodes to U+FFFD until its last byte."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_streamed_text_waits_for_whole_characters_and_stops_at_eos() -> None:
    import io

    from lmini_tools.chat import _Printer

    out = io.StringIO()
    printer = _Printer(_ByteTokenizer(), {0, 255}, out)
    shown = []
    for b in [*"hé ü".encode(), 255, *b"after the end"]:
        printer(torch.tensor([b]))
        shown.append(out.getvalue())
    assert "\ufffd" not in "".join(shown)
    assert shown[:4] == ["h", "h", "hé", "hé "]  # the two bytes of é appear together
    assert printer.finish() == "hé ü" and out.getvalue() == "hé ü\n"


def test_video_sharded_over_torchrun_ranks(media) -> None:
    """``torchrun --nproc-per-node 2 -m lmini_tools.cli chat --video``: the 3 sampled frames are
    split 2 + 1 over gloo ranks and rank 0 prints the single-process answer (greedy)."""
    folder = media["tiny-llama3"]
    args = ("--model", str(folder), "--video", str(media["mp4"]), "What happens?", "--max-new-tokens", "8",
            "--chunk-frames", "2", "--dist-timeout", "60")  # fmt: skip
    single = chat(*args)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python")])}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lmini_tools.cli", "chat", *args]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == single.stdout.strip() and single.stdout.strip()
    assert "sharded over 2 ranks (gloo)" in out.stderr
