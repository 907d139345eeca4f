"""A stand-in for the official LLaVA-Mini model (GitHub ``ictnlp/LLaVA-Mini`` at 47da113), for tests.

Written from reading the official ``llavamini/model/llavamini_arch.py`` (``Resampler``,
``LlavaMiniMetaModel``, ``encode_images_mini``, ``prepare_inputs_labels_for_multimodal``),
``llavamini/model/language_model/llavamini_llama.py`` (``LlavaMiniLlamaForCausalLM``: forward,
generate, prepare_inputs_for_generation), ``multimodal_encoder/clip_encoder.py`` and
``multimodal_projector/builder.py``; not copied. Same attribute structure and forward
semantics, built on transformers' own ``LlamaForCausalLM``, ``LlamaDecoderLayer`` and
``CLIPVisionModel`` from tiny random configs (no hub). Differences, all outside what the patch
reads: the compressor's width is the CLIP width (the official code hard-codes 1024 = CLIP-L's
and 8 heads), the CLIP tower is built from a config instead of loaded, and there is no LoRA or
training code.

``layer_convention`` emulates the pre-fusion layers of the two transformers lines:
``"4.43"`` (the official pin): each attention owns a ``rotary_emb``, layers take
``position_ids`` and return a tuple; ``"5.x"``: layers take ``position_embeddings`` from the
model's ``rotary_emb`` and return a tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from lmini_tools.baselines import OfficialResampler

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100


class TupleDecoderLayer(LlamaDecoderLayer):
    """transformers 4.43's LlamaDecoderLayer interface: its own RoPE, a tuple out."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.self_attn.rotary_emb = LlamaRotaryEmbedding(config)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, **kwargs):
        cos_sin = self.self_attn.rotary_emb(hidden_states, position_ids)
        out = super().forward(hidden_states, attention_mask=attention_mask, position_embeddings=cos_sin, **kwargs)
        return (out,)


class CLIPTower(nn.Module):
    """The official CLIPVisionTower over a CLIPVisionModel built from a config."""

    def __init__(self, vision_config: CLIPVisionConfig, select_layer: int = -2, select_feature: str = "patch") -> None:
        super().__init__()
        self.is_loaded = True
        self.select_layer, self.select_feature = select_layer, select_feature
        self.vision_tower = CLIPVisionModel(vision_config)
        self.vision_tower.requires_grad_(False)

    def feature_select(self, outs):
        feats = outs.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            return feats[:, 1:]
        if self.select_feature == "cls_patch":
            return feats
        raise ValueError(f"Unexpected select feature: {self.select_feature}")

    @torch.no_grad()
    def forward(self, images):
        outs = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(outs).to(images.dtype)

    @property
    def dtype(self):
        return self.vision_tower.dtype

    @property
    def device(self):
        return self.vision_tower.device

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def hidden_size(self):
        return self.config.hidden_size

    @property
    def num_patches(self):
        return (self.config.image_size // self.config.patch_size) ** 2


def build_projector(config) -> nn.Module:
    kind = getattr(config, "mm_projector_type", "linear")
    if kind == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    depth = int(kind[len("mlp") : -len("x_gelu")])
    mods: list[nn.Module] = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
    for _ in range(1, depth):
        mods += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
    return nn.Sequential(*mods)


class StandinLlavaMiniModel(LlamaModel):
    """LlavaMiniLlamaModel: the LLaMA body plus vision_tower, mm_projector, prefusion_layers, compressor."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.vision_tower = CLIPTower(config.vision_config_obj)
        self.mm_projector = build_projector(config)
        layer = TupleDecoderLayer if config.layer_convention == "4.43" else LlamaDecoderLayer
        self.prefusion_layers = nn.ModuleList(layer(config, i) for i in range(config.prefusion_layer_num))
        self.compressor = OfficialResampler(config.compressor_size, config.mm_hidden_size, config.compressor_heads)

    def get_vision_tower(self):
        return getattr(self, "vision_tower", None)


class StandinLlavaMiniForCausalLM(LlamaForCausalLM):
    """LlavaMiniLlamaForCausalLM: LlamaForCausalLM with the multimodal input preparation."""

    def __init__(self, config: LlamaConfig) -> None:
        super(LlamaForCausalLM, self).__init__(config)
        self.model = StandinLlavaMiniModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self):
        return self.model

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    # ---------------------------------------------------------------- official encode
    def _prefusion(self, x, mask):
        """The official loop over prefusion_layers, in this stand-in's layer convention."""
        attention_mask = _prepare_4d_causal_attention_mask(~mask, (x.size(0), x.size(1)), x, 0)
        position_ids = (~mask).int().long().cumsum(-1) - 1
        position_ids.masked_fill_((~mask).int() == 0, 1)
        if self.config.layer_convention == "4.43":
            for layer in self.get_model().prefusion_layers:
                x = layer(x, attention_mask=attention_mask, position_ids=position_ids)[0]
        else:
            cos_sin = self.get_model().rotary_emb(x, position_ids)
            for layer in self.get_model().prefusion_layers:
                x = layer(x, attention_mask=attention_mask, position_ids=position_ids, position_embeddings=cos_sin)
        return x

    def encode_images_mini(self, images, input_ids, labels=None, modal="image"):
        if modal == "video":
            return None
        all_text = self.get_input_embeddings()(input_ids.clamp(min=0)).detach()
        input_ids = input_ids * (labels == -100).int() if labels is not None else input_ids
        padding_mask = input_ids <= 0
        bsz, parts, rgb, height, width = images.size()
        model = self.get_model()
        if parts == 1:
            clip = model.get_vision_tower()(images[:, 0])
            compressed, _ = model.compressor(clip)
            compressed = model.mm_projector(compressed)
            glob = model.mm_projector(clip)
            x = torch.cat([glob, compressed, all_text], dim=1)
            n_prefix = glob.size(1) + compressed.size(1)
        else:
            clip = model.get_vision_tower()(images.view(bsz * parts, rgb, height, width))
            _, n, d = clip.size()
            clip = clip.view(bsz, -1, n, d)
            r, g = int(math.sqrt(parts - 1)), int(math.sqrt(n))
            hd = clip[:, : r * r].view(bsz, r, r, g, g, d).transpose(2, 3).reshape(bsz, r * g * r * g, d)
            compressed, _ = model.compressor(hd)
            compressed = model.mm_projector(compressed)
            glob = model.mm_projector(clip[:, -1])
            dd = glob.size(-1)
            hd_all = model.mm_projector(clip[:, :-1]).view(bsz, r, r, g, g, -1).transpose(2, 3).reshape(bsz, -1, dd)
            x = torch.cat([hd_all, glob, compressed, all_text], dim=1)
            n_prefix = hd_all.size(1) + glob.size(1) + compressed.size(1)
        mask = torch.cat([torch.zeros(bsz, n_prefix, dtype=torch.bool, device=padding_mask.device), padding_mask], 1)
        x = self._prefusion(x, mask)
        n_text = input_ids.size(1)
        text = x[:, -n_text:]
        compressed = x[:, -n_text - compressed.size(1) : -n_text]
        text = text * (~padding_mask).unsqueeze(-1).int() + all_text * padding_mask.unsqueeze(-1)
        return compressed, text

    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None
    ):
        if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        if type(images) is list:
            image_features, text_features = [], []
            for i in range(len(images)):
                lab = labels[i : i + 1] if labels is not None else None
                if images[i].ndim == 5:
                    video = images[i].unsqueeze(0)
                    feats, total = [], 0
                    for t in range(video.size(1)):
                        f, txt = self.encode_images_mini(video[:, t], input_ids[i : i + 1], lab)
                        feats.append(f)
                        total = total + txt.float()
                    image_features.append(torch.cat(feats, dim=1).squeeze(0))
                    text_features.append((total / video.size(1)).squeeze(0).type_as(txt))
                else:
                    f, txt = self.encode_images_mini(images[i].unsqueeze(0), input_ids[i : i + 1], lab)
                    image_features.append(f.squeeze(0))
                    text_features.append(txt.squeeze(0))
        elif images.ndim == 6:
            feats, total = [], 0
            with torch.no_grad():
                for t in range(images.size(1)):
                    f, txt = self.encode_images_mini(images[:, t], input_ids=input_ids, labels=labels)
                    feats.append(f)
                    total = total + txt.float()
            image_features = torch.cat(feats, dim=1).requires_grad_()
            text_features = (total / images.size(1)).type_as(txt).requires_grad_()
        else:
            image_features, text_features = self.encode_images_mini(images, input_ids=input_ids, labels=labels)

        _position_ids = position_ids
        attention_mask = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        if position_ids is None:
            position_ids = torch.arange(0, input_ids.shape[1], dtype=torch.long, device=input_ids.device)
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)
        _attention_mask = attention_mask
        input_ids = [ids[m] for ids, m in zip(input_ids, attention_mask, strict=True)]
        labels = [lab[m] for lab, m in zip(labels, attention_mask, strict=True)]
        new_embeds, new_labels, img = [], [], 0
        for b, ids in enumerate(input_ids):
            n_img = int((ids == IMAGE_TOKEN_INDEX).sum())
            txt = text_features[b]
            if n_img == 0:
                new_embeds.append(torch.cat([txt[_attention_mask[b]], image_features[img][0:0]], dim=0))
                new_labels.append(labels[b])
                img += 1
                continue
            idx = [-1] + torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist() + [ids.shape[0]]
            e, lab = [], []
            for i in range(len(idx) - 1):
                e.append(txt[idx[i] + 1 : idx[i + 1]])
                lab.append(labels[b][idx[i] + 1 : idx[i + 1]])
                if i < n_img:
                    f = image_features[img]
                    img += 1
                    e.append(f)
                    lab.append(torch.full((f.shape[0],), IGNORE_INDEX, device=lab[-1].device, dtype=lab[-1].dtype))
            new_embeds.append(torch.cat([x.to(self.device) for x in e]))
            new_labels.append(torch.cat(lab))
        limit = getattr(self.config, "tokenizer_model_max_length", None)
        if limit is not None:
            new_embeds = [x[:limit] for x in new_embeds]
            new_labels = [x[:limit] for x in new_labels]
        max_len, bsz = max(x.shape[0] for x in new_embeds), len(new_embeds)
        padded = []
        labels_padded = torch.full((bsz, max_len), IGNORE_INDEX, dtype=new_labels[0].dtype, device=new_labels[0].device)
        attention_mask = torch.zeros((bsz, max_len), dtype=attention_mask.dtype, device=attention_mask.device)
        position_ids = torch.zeros((bsz, max_len), dtype=position_ids.dtype, device=position_ids.device)
        for i, (e, lab) in enumerate(zip(new_embeds, new_labels, strict=True)):
            n = e.shape[0]
            zeros = torch.zeros((max_len - n, e.shape[1]), dtype=e.dtype, device=e.device)
            if getattr(self.config, "tokenizer_padding_side", "right") == "left":
                padded.append(torch.cat((zeros, e), dim=0))
                if n > 0:
                    labels_padded[i, -n:] = lab
                    attention_mask[i, -n:] = True
                    position_ids[i, -n:] = torch.arange(0, n, dtype=position_ids.dtype, device=position_ids.device)
            else:
                padded.append(torch.cat((e, zeros), dim=0))
                if n > 0:
                    labels_padded[i, :n] = lab
                    attention_mask[i, :n] = True
                    position_ids[i, :n] = torch.arange(0, n, dtype=position_ids.dtype, device=position_ids.device)
        if _position_ids is None:
            position_ids = None
        return None, position_ids, attention_mask, past_key_values, torch.stack(padded, dim=0), labels_padded

    # ---------------------------------------------------------------- official forward / generate
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, images=None, image_sizes=None, **kwargs):  # fmt: skip
        if inputs_embeds is None:
            input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes
                )
            )
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache, **kwargs,
        )  # fmt: skip

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, **kwargs):
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if images is not None:
            inputs, position_ids, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, image_sizes=image_sizes
            )
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        return super().generate(position_ids=position_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                **kwargs)  # fmt: skip

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None, **kwargs):
        images = kwargs.pop("images", None)
        image_sizes = kwargs.pop("image_sizes", None)
        inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, inputs_embeds=inputs_embeds, **kwargs
        )
        if images is not None:
            inputs["images"] = images
        if image_sizes is not None:
            inputs["image_sizes"] = image_sizes
        return inputs


def standin_config(
    *,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 96,
    llm_layers: int = 2,
    prefusion_layers: int = 2,
    vocab: int = 128,
    clip_width: int = 32,
    clip_layers: int = 2,
    clip_heads: int = 2,
    image_size: int = 32,
    patch: int = 8,
    compressor_size: int = 1,
    compressor_heads: int = 4,
    layer_convention: str = "5.x",
    padding_side: str = "right",
    projector: str = "mlp2x_gelu",
) -> LlamaConfig:
    """A tiny LLaVA-Mini config (the official fields plus this stand-in's own)."""
    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads, num_key_value_heads=kv_heads,
        num_hidden_layers=llm_layers, vocab_size=vocab, max_position_embeddings=4096, initializer_range=0.2,
        pad_token_id=0, rms_norm_eps=1e-5,
    )  # fmt: skip
    cfg.vision_config_obj = CLIPVisionConfig(
        hidden_size=clip_width, intermediate_size=2 * clip_width, num_hidden_layers=clip_layers,
        num_attention_heads=clip_heads, image_size=image_size, patch_size=patch,
    )  # fmt: skip
    cfg.mm_hidden_size = clip_width
    cfg.mm_projector_type = projector
    cfg.compressor_size = compressor_size
    cfg.compressor_heads = compressor_heads
    cfg.prefusion_layer_num = prefusion_layers
    cfg.layer_convention = layer_convention
    cfg.tokenizer_padding_side = padding_side
    return cfg


@torch.no_grad()
def build_standin(
    seed: int = 0, dtype: torch.dtype = torch.float32, std: float = 0.2, **config
) -> StandinLlavaMiniForCausalLM:
    """A stand-in with deterministic random weights: normal(0, std) everywhere, norm scales
    1 + normal(0, std) (not exactly 1, so a mis-wired norm shows), the compressor's sin-cos
    table kept; eval mode."""
    torch.manual_seed(seed)
    model = StandinLlavaMiniForCausalLM(standin_config(**config))
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("pos_embed"):
            continue
        noise = torch.randn(p.shape, generator=gen) * std
        is_norm = any(s in name for s in ("norm", "ln_q", "ln_kv", "layer_norm", "layrnorm"))
        p.copy_(noise + 1.0 if is_norm and name.endswith("weight") else noise)
    model.model.compressor.pos_embed.copy_(
        OfficialResampler(model.config.compressor_size, model.config.mm_hidden_size, 1).pos_embed
    )
    return model.to(dtype).eval()
