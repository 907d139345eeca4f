"""A vision tower named by path (``mm_vision_tower``: a local CLIP folder of any size, as
transformers writes one) and the official release layout (the tower's weights and processor in
that folder, not in the checkpoint), against transformers' own ``CLIPVisionModel``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_ids
from safetensors import safe_open

from llava_mini import CheckpointError, LlavaMini, LlavaMiniConfig, WeightLoadError, save_weights
from llava_mini.config import read_vision_tower_config
from llava_mini.preprocess import ImagePreprocessor, ImageProcessorConfig
from llava_mini.tiny_checkpoint import make_tiny_checkpoint
from llava_mini.weights import TOWER_PREFIX, read_vision_tower

transformers = pytest.importorskip("transformers")

#: A CLIP size of its own (not the default's, not the tiny config's): 30 px images of 5 px
#: patches (a 6 x 6 grid), width 24 in 3 heads, 3 layers.
TOWER = {"image_size": 30, "patch_size": 5, "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 3,
         "num_attention_heads": 3, "layer_norm_eps": 1e-6}  # fmt: skip
MEAN = [0.25, 0.5, 0.75]  # a processor that is not CLIP's, so that where it came from shows


def clip_folder(path: Path, *, full: bool = False, seed: int = 0, processor: bool = True, **size) -> Path:
    """A tower folder written by transformers: ``CLIPVisionModel`` (or, ``full``, a whole
    ``CLIPModel`` with a text half) ``save_pretrained`` in safetensors, and a
    ``CLIPImageProcessor`` at its image size; random weights with the LayerNorms perturbed."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    vc = CLIPVisionConfig(**{**TOWER, **size})
    torch.manual_seed(seed)
    if full:
        text = {"vocab_size": 50, "hidden_size": 16, "intermediate_size": 20, "num_hidden_layers": 1,
                "num_attention_heads": 2, "max_position_embeddings": 12}  # fmt: skip
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vc.to_dict(), projection_dim=8))
    else:
        model = CLIPVisionModel(vc)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name:
                p.add_(0.1 * torch.randn_like(p))  # not the identity LayerNorm HF initialises
    model.save_pretrained(str(path), safe_serialization=True)
    if processor:
        s = vc.image_size
        CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s}, image_mean=MEAN,
                           image_std=[0.2, 0.3, 0.4]).save_pretrained(str(path))  # fmt: skip
    return path


def llava_config(tower: str | Path | None, **over) -> dict:
    """An official-style LLaVA-Mini ``config.json`` whose ``mm_vision_tower`` is ``tower``."""
    hf = {"architectures": ["LlavaMiniLlamaForCausalLM"], "model_type": "llava_llama", "hidden_size": 64,
          "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "vocab_size": 128, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "compressor_size": 2,
          "prefusion_layer_num": 2, "compressor_num_heads": 4, "mm_projector_type": "mlp2x_gelu",
          "mm_vision_select_layer": -2, "mm_hidden_size": TOWER["hidden_size"]}  # fmt: skip
    if tower is not None:
        hf["mm_vision_tower"] = str(tower)
    hf.update(over)
    return hf


def hf_tower_state(tower: Path) -> dict[str, torch.Tensor]:
    """The tower's weights as transformers loads them, under the checkpoint's names (transformers
    5 names them without the ``vision_model.`` of transformers 4 and the checkpoints)."""
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(str(tower))
    state = {k if k.startswith("vision_model.") else "vision_model." + k: v for k, v in model.state_dict().items()}
    return {TOWER_PREFIX + k: v for k, v in state.items() if not k.endswith("position_ids")}


def two_layouts(tmp_path: Path, *, full: bool = False, seed: int = 0) -> tuple[Path, Path, Path, LlavaMini]:
    """(release checkpoint, all-in-one checkpoint, tower folder, the model both hold): the same
    weights, once with the tower in its own folder (the checkpoint without ``model.vision_tower.*``
    and without ``preprocessor_config.json``, ``mm_vision_tower`` naming the folder), once all in
    the checkpoint (the tower described by ``vision_config``, its name the official hub one)."""
    tower = clip_folder(tmp_path / "tower", full=full, seed=seed)
    cfg = LlavaMiniConfig.from_hf_config(llava_config(tower))
    model = LlavaMini(cfg, backend="reference").init_random_weights(seed + 1, 0.3).eval()
    model.load_state_dict({**model.state_dict(), **hf_tower_state(tower)})
    state = model.state_dict()
    release, whole = tmp_path / "release", tmp_path / "whole"
    save_weights({k: v for k, v in state.items() if not k.startswith("model.vision_tower.")}, release)
    (release / "config.json").write_text(json.dumps(llava_config(tower)))
    save_weights(state, whole)
    whole_cfg = llava_config("openai/clip-vit-large-patch14-336", vision_config=dict(TOWER))
    (whole / "config.json").write_text(json.dumps(whole_cfg))
    return release, whole, tower, model


def load(folder: Path, **kw) -> LlavaMini:
    cfg = LlavaMiniConfig.from_hf_config(json.loads((folder / "config.json").read_text()), **kw)
    return LlavaMini.from_pretrained(str(folder), cfg, backend="reference")


# ----------------------------------------------------------------------------- the tower's size
@pytest.mark.parametrize("full", [False, True], ids=["CLIPVisionConfig", "CLIPConfig"])
def test_tower_size_comes_from_the_folder(full: bool, tmp_path) -> None:
    tower = clip_folder(tmp_path / "t", full=full)
    assert json.loads((tower / "config.json").read_text())["model_type"] == ("clip" if full else "clip_vision_model")
    cfg = LlavaMiniConfig.from_hf_config(llava_config(tower, mm_vision_select_layer=-3))
    v = cfg.vision
    got = (v.image_size, v.patch_size, v.hidden_size, v.intermediate_size, v.num_layers, v.num_heads, v.layer_norm_eps)
    assert got == (30, 5, 24, 40, 3, 3, 1e-6)
    assert v.select_layer == -3 and v.num_patches == 36
    assert cfg.vision_tower_dir == str(tower.resolve())
    # fields left out take CLIPVisionConfig's defaults, as from_pretrained does
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    (sparse / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "image_size": 64}))
    from transformers import CLIPVisionConfig

    hf = CLIPVisionConfig.from_pretrained(str(sparse))
    mine = read_vision_tower_config(sparse)
    assert (mine.image_size, mine.patch_size, mine.hidden_size, mine.intermediate_size, mine.num_layers,
            mine.num_heads) == (hf.image_size, hf.patch_size, hf.hidden_size, hf.intermediate_size,
                                hf.num_hidden_layers, hf.num_attention_heads)  # fmt: skip


def test_vision_tower_argument_replaces_a_hub_name(tmp_path) -> None:
    tower = clip_folder(tmp_path / "t")
    hub = llava_config("openai/clip-vit-large-patch14-336")
    del hub["mm_hidden_size"]
    assert LlavaMiniConfig.from_hf_config(hub).vision.image_size == 336  # the known default, no folder
    assert LlavaMiniConfig.from_hf_config(hub).vision_tower_dir is None
    cfg = LlavaMiniConfig.from_hf_config(hub, vision_tower=tower)
    assert cfg.vision.image_size == 30 and cfg.vision_tower_dir == str(tower.resolve())
    # a training machine's path to the default tower: its size is known by the name
    gone = llava_config("/data/models/openai/clip-vit-large-patch14-336/", mm_hidden_size=1024)
    assert LlavaMiniConfig.from_hf_config(gone).vision.hidden_size == 1024


# ----------------------------------------------------------------------------- the release layout
@pytest.mark.parametrize("full", [False, True], ids=["CLIPVisionModel", "CLIPModel"])
def test_release_layout_equals_the_all_in_one_checkpoint(full: bool, tmp_path, gen) -> None:
    release, whole, tower, model = two_layouts(tmp_path, full=full)
    with safe_open(str(release / "model.safetensors"), "pt") as fh:
        assert not any(k.startswith("model.vision_tower.") for k in fh.keys())
    a, b = load(release), load(whole)
    sa, sb, ref = a.state_dict(), b.state_dict(), model.state_dict()
    assert sa.keys() == sb.keys() == ref.keys()
    assert all(torch.equal(sa[k], ref[k]) and torch.equal(sb[k], ref[k]) for k in ref)
    assert a.dtype == torch.float32
    ids = make_ids(gen, 2, 7, 128, image_at=3)
    pixels = torch.randn(2, 1, 3, 30, 30, generator=gen)
    with torch.no_grad():
        la, lb = a(ids, pixels), b(ids, pixels)
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    assert la.shape == (2, 7 - 1 + 4, 128) and la.abs().max() > 0
    # the tower's features are transformers' CLIPVisionModel's (hidden_states[-2] without CLS)
    from transformers import CLIPVisionModel

    hfm = CLIPVisionModel.from_pretrained(str(tower)).eval()
    x = pixels[:, 0]
    with torch.no_grad():
        want = hfm(x, output_hidden_states=True).hidden_states[-2][:, 1:]
        got = a.encode_images(x)
    assert (got - want).norm() / want.norm() < 1e-5


def test_tower_weights_take_the_checkpoint_dtype(tmp_path) -> None:
    release, _, tower, model = two_layouts(tmp_path)
    state = {k: v.half() for k, v in model.state_dict().items() if not k.startswith("model.vision_tower.")}
    save_weights(state, release)  # a float16 checkpoint beside the float32 CLIP folder, as released
    m = load(release)
    assert {p.dtype for p in m.parameters()} == {torch.float16}
    want = hf_tower_state(tower)
    got = m.state_dict()
    assert all(torch.equal(got[k], v.half()) for k, v in want.items())
    assert read_vision_tower(tower).keys() == want.keys()


def test_processor_comes_from_the_tower_folder_when_the_checkpoint_has_none(tmp_path) -> None:
    release, _, tower, _ = two_layouts(tmp_path)
    cfg = LlavaMiniConfig.from_hf_config(json.loads((release / "config.json").read_text()))
    pre = ImagePreprocessor.for_model(cfg, release)
    assert pre.processor.image_mean == tuple(MEAN) and pre.processor.crop_size == (30, 30)
    assert pre.processor == ImageProcessorConfig.from_pretrained(tower)
    assert ImagePreprocessor.for_model(cfg).processor.image_mean == tuple(MEAN)  # no checkpoint: the tower's
    own = ImageProcessorConfig.for_image_size(30)
    (release / "preprocessor_config.json").write_text(json.dumps({"crop_size": 30, "size": 30}))
    assert ImagePreprocessor.for_model(cfg, release).processor == own  # the checkpoint's own file first


def test_tiny_checkpoint_in_the_release_layout(tmp_path, gen) -> None:
    whole = make_tiny_checkpoint(tmp_path / "whole", "tiny-c2", seed=4, std=0.3)
    release = make_tiny_checkpoint(tmp_path / "release", "tiny-c2", seed=4, std=0.3, vision_tower_dir=tmp_path / "t")
    assert (
        not (release / "preprocessor_config.json").exists() and (tmp_path / "t" / "preprocessor_config.json").is_file()
    )
    hf = json.loads((release / "config.json").read_text())
    assert "vision_config" not in hf and hf["mm_vision_tower"] == str((tmp_path / "t").resolve())
    a, b = load(release), load(whole)
    assert a.config.replace(vision_tower_dir=None, name=b.config.name) == b.config
    ids = make_ids(gen, 2, 6, 128)
    pixels = torch.randn(2, 1, 3, 28, 28, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(a(ids, pixels), b(ids, pixels), rtol=1e-6, atol=1e-6)
    # transformers reads the tower folder as the official CLIPVisionTower.load_model would
    from transformers import CLIPVisionModel

    hfm = CLIPVisionModel.from_pretrained(str(tmp_path / "t")).eval()
    with torch.no_grad():
        want = hfm(pixels[:, 0], output_hidden_states=True).hidden_states[-2][:, 1:]
        assert (a.encode_images(pixels[:, 0]) - want).norm() / want.norm() < 1e-5
    assert ImagePreprocessor.for_model(a.config, release).processor == ImageProcessorConfig.for_image_size(28)


# ----------------------------------------------------------------------------- bad input
def test_bad_tower_names_and_folders(tmp_path) -> None:
    missing = tmp_path / "no-such-tower"
    with pytest.raises(ValueError, match=rf"mm_vision_tower: '{re.escape(str(missing))}' is not a local folder"):
        LlavaMiniConfig.from_hf_config(llava_config(missing))
    with pytest.raises(ValueError, match="mm_vision_tower: 'facebook/dinov2-small' is not a local folder and not"):
        LlavaMiniConfig.from_hf_config(llava_config("facebook/dinov2-small"))
    with pytest.raises(ValueError, match="mm_vision_tower: expected a CLIP folder or name"):
        LlavaMiniConfig.from_hf_config(llava_config(None, mm_vision_tower=3))
    with pytest.raises(ValueError, match="vision_tower: expected a local CLIP folder"):
        LlavaMiniConfig.from_hf_config(llava_config("openai/clip-vit-large-patch14-336"), vision_tower=missing)
    # a name that is no folder, with an embedded vision_config: that describes the tower
    embedded = llava_config("facebook/dinov2-small", vision_config=dict(TOWER))
    assert LlavaMiniConfig.from_hf_config(embedded).vision.image_size == 30
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"vision tower folder '{re.escape(str(empty))}': no config.json"):
        LlavaMiniConfig.from_hf_config(llava_config(empty))


@pytest.mark.parametrize(
    ("doc", "words"),
    [("{not json", "not a readable JSON file"), ("[1, 2]", "expected a JSON object"),
     ({"model_type": "siglip_vision_model"}, "model_type: expected one of"),
     ({**TOWER, "num_hidden_layers": 0}, "num_hidden_layers: expected an int >= 1, got 0"),
     ({**TOWER, "hidden_size": "big"}, "hidden_size: expected an int"),
     ({**TOWER, "layer_norm_eps": -1}, "layer_norm_eps: expected a finite number > 0"),
     ({**TOWER, "patch_size": 7}, "image_size: 30 is not a multiple of patch_size = 7"),
     ({**TOWER, "num_attention_heads": 5}, "hidden_size: 24 is not divisible by num_heads = 5"),
     ({**TOWER, "hidden_act": "gelu"}, "hidden_act: only 'quick_gelu'"),
     ({**TOWER, "image_size": [30, 30]}, "image_size: expected an int"),
     ({"model_type": "clip"}, "vision_config: missing"),
     ({"model_type": "clip", "vision_config": [1]}, "vision_config: expected an object"),
     ({"model_type": "clip", "vision_config": {**TOWER, "num_attention_heads": 0}},
      "vision_config.num_attention_heads: expected an int")],
)  # fmt: skip
def test_bad_tower_config_names_file_and_field(doc, words: str, tmp_path) -> None:
    tower = tmp_path / "t"
    tower.mkdir()
    path = tower / "config.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(words)):
        LlavaMiniConfig.from_hf_config(llava_config(tower))


def test_tower_folder_and_vision_config_must_agree(tmp_path) -> None:
    tower = clip_folder(tmp_path / "t")
    other = {**TOWER, "intermediate_size": 48}
    with pytest.raises(
        ValueError, match=r"vision_config: intermediate_size = 48 disagrees with .*t/config.json \(40\)"
    ):
        LlavaMiniConfig.from_hf_config(llava_config(tower, vision_config=other))
    assert LlavaMiniConfig.from_hf_config(llava_config(tower, vision_config=dict(TOWER))).vision.hidden_size == 24
    with pytest.raises(ValueError, match="mm_hidden_size: 1024 does not match the CLIP tower's 24"):
        LlavaMiniConfig.from_hf_config(llava_config(tower, mm_hidden_size=1024))


def test_missing_tower_weights_name_both_places(tmp_path) -> None:
    release, _, tower, _ = two_layouts(tmp_path)
    cfg = LlavaMiniConfig.from_hf_config(json.loads((release / "config.json").read_text()))
    weights = tower / "model.safetensors"
    moved = tmp_path / "tower-weights.safetensors"
    shutil.move(weights, moved)
    both = rf"the checkpoint {re.escape(str(release))} has no model.vision_tower.\* keys, and the vision tower folder "
    with pytest.raises(
        CheckpointError, match=both + rf"{re.escape(str(tower.resolve()))} .*has no .safetensors files$"
    ):
        LlavaMini.from_pretrained(str(release), cfg)
    (tower / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=both + ".*pytorch_model.bin is not read"):
        LlavaMini.from_pretrained(str(release), cfg)
    shutil.rmtree(tower)
    with pytest.raises(CheckpointError, match=both + ".*does not exist"):
        LlavaMini.from_pretrained(str(release), cfg)
    # a hub name: no folder to look in
    hub = LlavaMiniConfig.from_hf_config(llava_config("openai/clip-vit-large-patch14-336", vision_config=dict(TOWER)))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(release))} has no .* names no local vision tower"):
        LlavaMini.from_pretrained(str(release), hub)


def test_incomplete_or_foreign_tower_weights_are_named(tmp_path) -> None:
    release, _, tower, _ = two_layouts(tmp_path)
    cfg = LlavaMiniConfig.from_hf_config(json.loads((release / "config.json").read_text()))
    from safetensors.torch import load_file, save_file

    path = tower / "model.safetensors"
    state = load_file(str(path))
    (gone,) = [k for k in state if k.endswith("post_layernorm.bias")]  # transformers 5: no vision_model.
    save_file({k: v for k, v in state.items() if k != gone} | {"vision_model.extra": torch.zeros(2)}, str(path))
    with pytest.raises(WeightLoadError) as e:
        LlavaMini.from_pretrained(str(release), cfg)
    assert e.value.missing == [TOWER_PREFIX + "vision_model.post_layernorm.bias"]
    assert e.value.unexpected == [TOWER_PREFIX + "vision_model.extra"]
    assert f"{TOWER_PREFIX}vision_model.extra ({path.resolve()})" in str(e.value)
    twice = {"vision_model.post_layernorm.bias": state[gone].clone(), "post_layernorm.bias": state[gone]}
    save_file(twice, str(path))
    with pytest.raises(
        CheckpointError,
        match=r"keys (vision_model\.)?post_layernorm.bias .* and (vision_model\.)?post_layernorm.bias .* are the same",
    ):
        LlavaMini.from_pretrained(str(release), cfg)
    save_file({"vision_model.x": torch.zeros(2, dtype=torch.int64)}, str(path))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path.resolve()))}: key vision_model.x: expected a"):
        LlavaMini.from_pretrained(str(release), cfg)
