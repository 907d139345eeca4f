"""The tiny checkpoint folder: official file layout and field names, read back by the loaders."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build

from llava_mini import LlavaMini, LlavaMiniConfig
from llava_mini.preprocess import ImagePreprocessor, ImageProcessorConfig
from llava_mini.tiny_checkpoint import TINY_CORPUS, make_tiny_checkpoint

pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["tiny", "tiny-llama3", "tiny-hd", "tiny-baseline"])
def test_folder_loads_back_as_the_named_model(name: str, tiny_checkpoint) -> None:
    d = tiny_checkpoint(name)
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "generation_config.json",
              "tokenizer.json", "tokenizer_config.json"):  # fmt: skip
        assert (d / f).is_file(), f
    hf = json.loads((d / "config.json").read_text())
    assert hf["architectures"] == ["LlavaMiniLlamaForCausalLM"] and hf["model_type"] == "llava_llama"
    cfg = LlavaMiniConfig.from_hf_config(hf)
    want = LlavaMiniConfig.from_name(name)
    heads = want.compressor_heads if not want.is_mini else cfg.compressor_heads  # the baseline has none
    assert cfg.replace(name=want.name, compressor_heads=heads) == want
    got = LlavaMini.from_pretrained(str(d), cfg).state_dict()
    ref = build(name).state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    proc = ImageProcessorConfig.from_pretrained(d)
    assert proc == ImageProcessorConfig.for_image_size(want.vision.image_size)
    assert ImagePreprocessor.for_model(cfg, d).image_aspect_ratio == "pad"


@pytest.mark.parametrize("name", ["tiny", "tiny-llama3"])
def test_tokenizer_loads_offline_and_round_trips(name: str, tiny_checkpoint, monkeypatch) -> None:
    from transformers import AutoTokenizer, LlamaConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tiny_checkpoint(name)
    # config=: transformers 5.17 cannot read a llava_llama config.json with rope_scaling on its own
    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True, config=LlamaConfig())
    vocab = LlavaMiniConfig.from_name(name).text.vocab_size
    assert len(tok) <= vocab
    for text in (*TINY_CORPUS, "Odd: 12 zebras & 3 quokkas?\nYes!"):
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids, text
        assert max(ids) < vocab
        assert tok.decode(ids, skip_special_tokens=True) == text
    gen = json.loads((d / "generation_config.json").read_text())
    if name == "tiny-llama3":
        names = tok.convert_ids_to_tokens(gen["eos_token_id"])
        assert names == ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
        assert tok.chat_template and "<|start_header_id|>" in tok.chat_template
    else:
        assert tok.convert_ids_to_tokens(gen["eos_token_id"]) == "</s>" and tok.bos_token == "<s>"
    assert tok.convert_ids_to_tokens(LlavaMiniConfig.from_name(name).text.pad_token_id) == tok.pad_token


def test_options_and_bad_names(tmp_path) -> None:
    d = make_tiny_checkpoint(tmp_path / "a", "tiny-c2", seed=3, tokenizer_model_max_length=40)
    cfg = LlavaMiniConfig.from_hf_config(json.loads((d / "config.json").read_text()))
    assert cfg.tokenizer_model_max_length == 40 and cfg.num_queries == 4
    sd = LlavaMini.from_pretrained(str(d), cfg).state_dict()
    assert torch.equal(sd["lm_head.weight"], build("tiny-c2", seed=3).lm_head.weight)
    with pytest.raises(ValueError, match="name: expected a tiny config"):
        make_tiny_checkpoint(tmp_path / "b", "llava-mini-vicuna-7b")
    with pytest.raises(ValueError, match="tokenizer_model_max_length"):
        make_tiny_checkpoint(tmp_path / "c", "tiny", tokenizer_model_max_length=0)
