"""safetensors checkpoints: bit-exact round trips, strict names and shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build, make_ids
from safetensors.torch import load_file, save_file

from llava_mini import LlavaMini, LlavaMiniConfig, WeightLoadError, load_weights, save_weights


@pytest.mark.parametrize("name, shard", [("tiny", None), ("tiny-hd", 20_000), ("tiny-baseline", None)])
def test_round_trip_is_bit_exact(name: str, shard: int | None, tmp_path: Path, gen: torch.Generator) -> None:
    src = build(name, seed=int(torch.randint(0, 1000, (1,), generator=gen)))
    files = save_weights(src, tmp_path, max_shard_bytes=shard)
    if shard:
        assert len(files) > 1
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(src.state_dict())
    on_disk = {}
    for f in files:
        on_disk.update(load_file(str(f)))
    assert set(on_disk) == set(src.state_dict())  # official key names on disk
    dst = build(name, seed=12345)
    load_weights(dst, tmp_path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    ids = make_ids(gen, 1, 6, src.config.text.vocab_size)
    images = torch.randn(1, src.config.image_parts, 3, 28, 28, generator=gen)
    with torch.no_grad():
        assert torch.equal(src(ids, images), dst(ids, images))


def test_from_pretrained_via_meta(tmp_path: Path, gen: torch.Generator) -> None:
    src = build("tiny-llama3", seed=3)
    save_weights(src, tmp_path)
    dst = LlavaMini.from_pretrained(str(tmp_path), LlavaMiniConfig.from_name("tiny-llama3"), backend="reference")
    assert not any(t.is_meta for t in list(dst.parameters()) + list(dst.buffers()))
    assert torch.equal(dst.model.rotary_emb.inv_freq, src.model.rotary_emb.inv_freq)
    ids = make_ids(gen, 1, 6, 128)
    images = torch.randn(1, 1, 3, 28, 28, generator=gen)
    assert torch.equal(src.generate(ids, images, max_new_tokens=4), dst.generate(ids, images, max_new_tokens=4))


def _tamper(tmp_path: Path, edit) -> Path:
    sd = {k: v.clone() for k, v in build("tiny").state_dict().items()}
    edit(sd)
    save_file(sd, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    def edit(sd):
        del sd["model.compressor.query"]
        del sd["model.prefusion_layers.1.mlp.up_proj.weight"]
        sd["model.compressor.kv_proj.weight"] = torch.zeros(32, 16)

    with pytest.raises(WeightLoadError) as info:
        load_weights(build("tiny"), _tamper(tmp_path, edit))
    err = info.value
    assert err.missing == ["model.compressor.query", "model.prefusion_layers.1.mlp.up_proj.weight"]
    assert err.unexpected == ["model.compressor.kv_proj.weight"]
    msg = str(err)
    assert "model.compressor.query" in msg and "model.compressor.kv_proj.weight" in msg and "2 missing" in msg


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    def edit(sd):
        sd["model.mm_projector.0.weight"] = torch.zeros(64, 31)

    model = build("tiny")
    before = model.model.mm_projector[0].weight.clone()
    with pytest.raises(WeightLoadError, match=r"model\.mm_projector\.0\.weight.*\[64, 32\].*\[64, 31\]"):
        load_weights(model, _tamper(tmp_path, edit))
    assert torch.equal(model.model.mm_projector[0].weight, before)  # nothing was loaded


def test_derived_buffers_are_ignored_and_empty_dir_fails(tmp_path: Path) -> None:
    def edit(sd):
        sd["model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
        sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)

    load_weights(build("tiny"), _tamper(tmp_path, edit))
    with pytest.raises(FileNotFoundError):
        load_weights(build("tiny"), tmp_path / "nowhere")
