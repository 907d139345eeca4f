"""A tiny LLaVA-Mini checkpoint folder in the official layout, built locally in about a second.

:func:`make_tiny_checkpoint` writes what a released checkpoint folder holds, for a named tiny
config (``tiny``, ``tiny-c2``, ``tiny-hd``, ``tiny-llama3``, ``tiny-baseline``) with random
weights, so that tests, ``lmini chat`` and ``lmini demo`` run the whole "folder -> answer" path
with no download:

- ``config.json``: the official field names (HF ``LlamaConfig`` fields, ``mm_*``,
  ``compressor_size``, ``prefusion_layer_num``, ``resolution_ratio``, ``image_aspect_ratio``,
  ``tokenizer_model_max_length`` ...), read back by :meth:`LlavaMiniConfig.from_hf_config`;
  the tiny CLIP tower, which a released config names only (``mm_vision_tower``), is described
  in a ``vision_config`` object (HF ``CLIPVisionConfig`` names, as in HF's ``LlavaConfig``) and
  its compressor's head count in ``compressor_num_heads`` (both read only by this project);
- ``model.safetensors`` (:func:`llava_mini.weights.save_weights`, official key names);
- ``preprocessor_config.json``: CLIP's ``CLIPImageProcessor`` settings at the tiny image size;
- ``generation_config.json``: bos / eos / pad ids (several eos ids for the Llama-3.1 flavour);
- ``tokenizer.json`` + ``tokenizer_config.json`` (+ ``chat_template.jinja`` for the Llama-3.1
  flavour): a BPE tokenizer trained here with the ``tokenizers`` library on a small built-in
  corpus, loadable by ``transformers.AutoTokenizer.from_pretrained(folder)`` offline.

``vision_tower_dir=`` writes the official release layout instead: the tower as its own CLIP
folder there (``config.json`` a ``CLIPVisionConfig``, ``model.safetensors`` with
``CLIPVisionModel``'s ``vision_model.*`` keys, ``preprocessor_config.json``: what
``CLIPVisionModel.from_pretrained`` and ``CLIPImageProcessor.from_pretrained`` read), and the
checkpoint without the tower's weights, processor file and ``vision_config``, its
``mm_vision_tower`` naming that folder.

Two tokenizer flavours, chosen by the text model: the ``tiny-llama3`` config gets Llama 3.1's
special tokens (``<|begin_of_text|>``, ``<|eot_id|>``, ``<|eom_id|>``, ``<|end_of_text|>``,
headers) and a chat template of Llama 3.1's shape (without its date lines), every other config
Vicuna's (``<unk>``, ``<s>``, ``</s>``). Both add the BOS token in front, as the Llama
tokenizers do. ``<image>`` is not a token: the prompt is split on it (:mod:`llava_mini.prompt`).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from .config import LlavaMiniConfig
from .model import LlavaMini
from .preprocess import ImageProcessorConfig
from .weights import TOWER_PREFIX, save_weights

__all__ = ["make_tiny_checkpoint", "TINY_CORPUS"]

#: What the tiny tokenizer's merges are learned from (the prompts' words, so they tokenize short).
TINY_CORPUS = (
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "You are a helpful language and vision assistant.",
    "You are able to understand the visual content that the user provides, and assist the user with a "
    "variety of tasks using natural language.",
    "USER: What is in the image? ASSISTANT: The image shows a red square on a blue background.",
    "What happens in the video? Describe the picture in detail.",
)

_LLAMA3_SPECIALS = (
    "<|reserved_special_token_0|>",  # id 0: the config's pad_token_id, never produced by text
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<unk>",
)
_VICUNA_SPECIALS = ("<unk>", "<s>", "</s>")

# Llama 3.1's template shape: BOS, then per message a role header, the trimmed content, <|eot_id|>.
_LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _train_tokenizer(specials: tuple[str, ...], vocab_size: int, bos: str):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    unk = "<unk>"
    alphabet = list(string.ascii_letters + string.digits + string.punctuation + "\n")
    tok = Tokenizer(models.BPE(unk_token=unk))
    # SentencePiece-style: spaces become "▁" and stay in the tokens, so decoding restores them.
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet) + 1,  # + "▁"
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS, trainer)
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"tiny tokenizer: {tok.get_vocab_size()} tokens do not fit vocab_size = {vocab_size}")
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def _clip_vision_config(cfg: LlavaMiniConfig) -> dict:
    """The tower's HF ``CLIPVisionConfig`` fields."""
    v = cfg.vision
    return {
        "model_type": "clip_vision_model",
        "hidden_act": "quick_gelu",
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_layers,
        "num_attention_heads": v.num_heads,
        "num_channels": v.num_channels,
        "layer_norm_eps": v.layer_norm_eps,
    }


def _hf_config(cfg: LlavaMiniConfig, *, bos: int, eos: int, tokenizer_model_max_length: int | None) -> dict:
    t, v = cfg.text, cfg.vision
    hf: dict = {
        "architectures": ["LlavaMiniLlamaForCausalLM"],
        "model_type": "llava_llama",
        "torch_dtype": "float32",
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads,
        "vocab_size": t.vocab_size,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_theta,
        "max_position_embeddings": t.max_position_embeddings,
        "rope_scaling": None,
        "hidden_act": "silu",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": t.pad_token_id,
        "tie_word_embeddings": False,
        "use_cache": True,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",  # the official name; the tower is vision_config
        "mm_hidden_size": v.hidden_size,
        "mm_projector_type": cfg.projector_type,
        "mm_vision_select_layer": v.select_layer,
        "mm_vision_select_feature": v.select_feature,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
        "tokenizer_padding_side": "right",
        "vision_config": _clip_vision_config(cfg),
    }
    if t.rope_scaling is not None:
        r = t.rope_scaling
        hf["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": r.factor,
            "low_freq_factor": r.low_freq_factor,
            "high_freq_factor": r.high_freq_factor,
            "original_max_position_embeddings": r.original_max_position_embeddings,
        }
    if cfg.is_mini:
        hf.update(
            compressor_size=cfg.compressor_size,
            prefusion_layer_num=cfg.prefusion_layers,
            resolution_ratio=cfg.resolution_ratio,
            compressor_num_heads=cfg.compressor_heads,  # not official (fixed at 8 there): the tiny tower is narrow
        )
    if tokenizer_model_max_length is not None:
        hf["tokenizer_model_max_length"] = tokenizer_model_max_length
    return hf


def _processor_config(size: int) -> dict:
    p = ImageProcessorConfig.for_image_size(size)
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": p.do_resize,
        "size": {"shortest_edge": p.shortest_edge},
        "resample": p.resample,
        "do_center_crop": p.do_center_crop,
        "crop_size": {"height": p.crop_size[0], "width": p.crop_size[1]},
        "do_rescale": p.do_rescale,
        "rescale_factor": p.rescale_factor,
        "do_normalize": p.do_normalize,
        "image_mean": list(p.image_mean),
        "image_std": list(p.image_std),
        "do_convert_rgb": True,
    }


def make_tiny_checkpoint(
    directory: str | Path,
    name: str = "tiny",
    *,
    seed: int = 0,
    std: float = 0.02,
    tokenizer_model_max_length: int | None = None,
    vision_tower_dir: str | Path | None = None,
) -> Path:
    """Write a tiny checkpoint folder for the named config (:meth:`LlavaMiniConfig.from_name`,
    a ``tiny*`` name) with random weights (:meth:`LlavaMini.init_random_weights` with ``seed``
    and ``std``; a larger ``std`` than the default 0.02, e.g. 0.3, makes answers depend visibly
    on the image)
    into ``directory`` (created if needed; files of the same names are replaced). Returns the
    folder. ``tokenizer_model_max_length`` is written to ``config.json`` when given.
    ``vision_tower_dir``: the official release layout, the tower in that folder (created if
    needed; see the module docstring) and named by the checkpoint's ``mm_vision_tower``
    (absolute path).

    The folder loads with ``LlavaMini.from_pretrained(d, LlavaMiniConfig.from_hf_config(
    json.load(open(d / "config.json"))))`` and :func:`llava_mini.prompt.load_tokenizer`; the
    model built from it equals ``LlavaMini(LlavaMiniConfig.from_name(name)).init_random_weights(seed, std)``.
    Needs the ``tokenizers`` and ``transformers`` packages (``pip install 'lmini-kernels[chat]'``).
    """
    if not isinstance(name, str) or not name.startswith("tiny"):
        tiny = ", ".join(n for n in LlavaMiniConfig.names() if n.startswith("tiny"))
        raise ValueError(f"name: expected a tiny config ({tiny}), got {name!r}")
    cfg = LlavaMiniConfig.from_name(name)
    if tokenizer_model_max_length is not None:
        cfg = cfg.replace(tokenizer_model_max_length=tokenizer_model_max_length)  # validates it
    from transformers import PreTrainedTokenizerFast

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    llama3 = cfg.text.rope_scaling is not None
    if llama3:
        specials, bos, eos, unk, pad = _LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>", "<unk>", _LLAMA3_SPECIALS[0]
        stops = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")  # Llama 3.1's: 128001, 128008, 128009
        template = _LLAMA3_CHAT_TEMPLATE
    else:
        specials, bos, eos, unk, pad = _VICUNA_SPECIALS, "<s>", "</s>", "<unk>", "<unk>"
        stops, template = ("</s>",), None
    tok = _train_tokenizer(specials, cfg.text.vocab_size, bos)
    ids = {s: tok.token_to_id(s) for s in specials}
    if ids[pad] != cfg.text.pad_token_id:
        raise ValueError(f"tiny tokenizer: pad token {pad!r} got id {ids[pad]}, not {cfg.text.pad_token_id}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        model_max_length=tokenizer_model_max_length or cfg.text.max_position_embeddings,
        padding_side="right",
        chat_template=template,
    )
    fast.save_pretrained(str(out))
    model = LlavaMini(cfg, backend="reference").init_random_weights(seed, std)
    hf = _hf_config(cfg, bos=ids[bos], eos=ids[eos], tokenizer_model_max_length=tokenizer_model_max_length)
    processor = _processor_config(cfg.vision.image_size)
    state = model.state_dict()
    if vision_tower_dir is not None:
        tower = Path(vision_tower_dir).resolve()
        tower.mkdir(parents=True, exist_ok=True)
        save_weights({k[len(TOWER_PREFIX) :]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}, tower)
        tower_config = {"architectures": ["CLIPVisionModel"], **_clip_vision_config(cfg), "torch_dtype": "float32"}
        for fname, doc in (("config.json", tower_config), ("preprocessor_config.json", processor)):
            (tower / fname).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        state = {k: v for k, v in state.items() if not k.startswith(TOWER_PREFIX)}
        hf["mm_vision_tower"] = str(tower)
        del hf["vision_config"]
        (out / "preprocessor_config.json").unlink(missing_ok=True)
    save_weights(state, out)
    gen = {"bos_token_id": ids[bos], "eos_token_id": [ids[s] for s in stops], "pad_token_id": ids[pad]}
    if len(stops) == 1:
        gen["eos_token_id"] = ids[stops[0]]
    files = {"config.json": hf, "generation_config.json": gen}
    if vision_tower_dir is None:
        files["preprocessor_config.json"] = processor
    for fname, doc in files.items():
        (out / fname).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out
