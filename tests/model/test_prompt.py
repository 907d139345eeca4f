"""Tokenizer, conversation templates and image placeholder of a checkpoint folder (official formats)."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from conftest import build

from llava_mini import IMAGE_TOKEN_INDEX
from llava_mini.prompt import (
    CONV_TEMPLATES,
    build_prompt,
    default_template,
    eos_token_ids,
    load_tokenizer,
    tokenizer_image_token,
)

pytest.importorskip("transformers")

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def _words(rng: random.Random, n: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789?!.,'"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(1, 7))) for _ in range(n))


def test_vicuna_v1_prompt_is_the_official_string(tiny_checkpoint) -> None:
    tok = load_tokenizer(tiny_checkpoint("tiny"))
    assert default_template(tok) == "vicuna_v1"
    got = build_prompt("What is shown?", "vicuna_v1", tokenizer=tok)
    assert got == f"{VICUNA_SYSTEM} USER: <image>\nWhat is shown? ASSISTANT:"
    assert build_prompt("Hi", "vicuna_v1", image=False) == f"{VICUNA_SYSTEM} USER: Hi ASSISTANT:"
    # official IMAGE_PLACEHOLDER: the image goes where the user put it
    assert build_prompt("A <image-placeholder> B", "vicuna_v1") == f"{VICUNA_SYSTEM} USER: A <image> B ASSISTANT:"


def test_llama_3_1_prompt_goes_through_the_chat_template(tiny_checkpoint) -> None:
    tok = load_tokenizer(tiny_checkpoint("tiny-llama3"))
    assert default_template(tok) == "llava_llama_3_1"
    system = CONV_TEMPLATES["llava_llama_3_1"].system
    assert system.startswith("You are a helpful language and vision assistant. You are able")
    got = build_prompt("What is shown?", "llava_llama_3_1", tokenizer=tok)
    want = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + system + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is shown?<|eot_id|>"
    )  # no assistant header: the official template renders with add_generation_prompt=False
    assert got == want
    with pytest.raises(ValueError, match="needs the tokenizer"):
        build_prompt("Hi", "llava_llama_3_1")
    plain = load_tokenizer(tiny_checkpoint("tiny"))
    with pytest.raises(ValueError, match="chat_template"):
        build_prompt("Hi", "llava_llama_3_1", tokenizer=plain)
    with pytest.raises(ValueError, match="template: expected one of vicuna_v1, llava_v1, llava_llama_3_1"):
        build_prompt("Hi", "llama_2")


@pytest.mark.parametrize("name", ["tiny", "tiny-llama3"])
def test_image_token_splice_matches_piecewise_tokenizing(name: str, tiny_checkpoint, gen) -> None:
    tok = load_tokenizer(tiny_checkpoint(name))
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
    for _ in range(5):
        before, after = _words(rng, rng.randint(0, 6)), _words(rng, rng.randint(1, 6))
        ids = tokenizer_image_token(f"{before}<image>{after}", tok)
        a, b = tok(before).input_ids, tok(after).input_ids
        assert a[0] == b[0] == tok.bos_token_id
        assert ids == a + [IMAGE_TOKEN_INDEX] + b[1:]
        assert ids.count(IMAGE_TOKEN_INDEX) == 1 and ids.count(tok.bos_token_id) == 1
    assert tokenizer_image_token("no image here", tok, image=False) == tok("no image here").input_ids


class _NoBos:
    """A tokenizer without BOS: the official code then keeps every piece whole."""

    bos_token_id = None

    def __call__(self, text: str):
        return type("Enc", (), {"input_ids": [len(w) for w in text.split()]})()


def test_image_token_without_bos_keeps_pieces_whole() -> None:
    assert tokenizer_image_token("ab cde<image>f gh", _NoBos()) == [2, 3, IMAGE_TOKEN_INDEX, 1, 2]


def test_placeholder_errors(tiny_checkpoint) -> None:
    tok = load_tokenizer(tiny_checkpoint("tiny"))
    with pytest.raises(ValueError, match="exactly one '<image>' placeholder is expected, found 0"):
        tokenizer_image_token("USER: hi", tok, image=True)
    with pytest.raises(ValueError, match="found 2"):
        tokenizer_image_token(build_prompt("<image> twice", "vicuna_v1"), tok)
    with pytest.raises(ValueError, match="no image or video is given"):
        tokenizer_image_token("<image>\nhi", tok, image=False)
    with pytest.raises(ValueError, match="question: holds an image placeholder"):
        build_prompt("<image>\nhi", "vicuna_v1", image=False)
    with pytest.raises(ValueError, match="question: expected a non-empty string"):
        build_prompt("  ", "vicuna_v1")


def test_folder_without_tokenizer_is_named(tiny_checkpoint, tmp_path) -> None:
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("tiny"), d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"no tokenizer files \(expected tokenizer_config.json and one of tokenizer"):
        load_tokenizer(d)
    with pytest.raises(ValueError, match="not a directory"):
        load_tokenizer(tmp_path / "missing")
    (d / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="does not load"):
        load_tokenizer(d)


def test_eos_ids(tiny_checkpoint, tmp_path) -> None:
    d3 = tiny_checkpoint("tiny-llama3")
    tok = load_tokenizer(d3)
    got = eos_token_ids(d3, tok)
    assert tok.convert_ids_to_tokens(got) == ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
    dv = tiny_checkpoint("tiny")
    assert eos_token_ids(dv, load_tokenizer(dv)) == [load_tokenizer(dv).convert_tokens_to_ids("</s>")]
    d = tmp_path / "c"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert eos_token_ids(d) == [7, 9]  # no generation_config.json: config.json's
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    with pytest.raises(ValueError, match="generation_config.json: eos_token_id"):
        eos_token_ids(d)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama3"])
def test_prompt_ids_run_through_the_model(name: str, tiny_checkpoint, gen) -> None:
    tok = load_tokenizer(tiny_checkpoint(name))
    prompt = build_prompt("Describe the picture in detail.", default_template(tok), tokenizer=tok)
    ids = torch.tensor([tokenizer_image_token(prompt, tok)])
    m = build(name)
    images = torch.randn(1, 1, 3, 28, 28, generator=gen)
    with torch.no_grad():
        mm = m.prepare_inputs(ids, images)
    assert mm.inputs_embeds.shape[1] == ids.shape[1] - 1 + m.config.num_queries


def test_llava_v1_template_is_the_official_string() -> None:
    human = (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    )
    assert build_prompt("What is shown?", "llava_v1") == f"{human} USER: <image>\nWhat is shown? ASSISTANT:"
    assert build_prompt("Hi", "llava_v1", image=False) == f"{human} USER: Hi ASSISTANT:"
    assert CONV_TEMPLATES["llava_v1"].stop_str == "</s>"


def test_im_start_end_wraps_the_image_token(tiny_checkpoint, tmp_path) -> None:
    from llava_mini import LlavaMiniConfig
    from llava_mini.prompt import IM_END_TOKEN, IM_START_TOKEN

    se = "<im_start><image><im_end>"
    assert (IM_START_TOKEN, IM_END_TOKEN) == ("<im_start>", "<im_end>")
    assert build_prompt("Q?", "vicuna_v1", im_start_end=True) == f"{VICUNA_SYSTEM} USER: {se}\nQ? ASSISTANT:"
    assert build_prompt("A <image-placeholder> B", "llava_v1", im_start_end=True).endswith(f"USER: A {se} B ASSISTANT:")
    assert build_prompt("Hi", "vicuna_v1", image=False, im_start_end=True) == f"{VICUNA_SYSTEM} USER: Hi ASSISTANT:"
    with pytest.raises(ValueError, match="im_start_end: expected a bool"):
        build_prompt("Q", "vicuna_v1", im_start_end=1)
    # a tokenizer trained with them has them as added tokens (official initialize_vision_tokenizer):
    # they stand right beside the image's placeholder id
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("tiny-llama3"), d)
    tok = load_tokenizer(d)
    tok.add_tokens([IM_START_TOKEN, IM_END_TOKEN], special_tokens=True)
    prompt = build_prompt("Q?", "llava_llama_3_1", tokenizer=tok, im_start_end=True)
    assert f"{se}\nQ?" in prompt
    ids = tokenizer_image_token(prompt, tok)
    at = ids.index(IMAGE_TOKEN_INDEX)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 2
    assert tok.convert_ids_to_tokens(ids[at - 1 : at + 2 : 2]) == [IM_START_TOKEN, IM_END_TOKEN]
    # the config field: official mm_use_im_start_end, false in the tiny checkpoints
    hf = json.loads((d / "config.json").read_text())
    assert not LlavaMiniConfig.from_hf_config(hf).use_im_start_end
    assert LlavaMiniConfig.from_hf_config({**hf, "mm_use_im_start_end": True}).use_im_start_end
    with pytest.raises(ValueError, match="mm_use_im_start_end: expected true or false"):
        LlavaMiniConfig.from_hf_config({**hf, "mm_use_im_start_end": "yes"})
