"""Independent, deliberately naive re-implementations used as test oracles.

They read only a state dict (official key names) and a config, use float64, explicit
loops / einsums, and share no code with ``llava_mini`` or ``lmini_kernels``: patch
extraction by slicing instead of a convolution, HF-style additive 4D masks instead of
boolean ones, RoPE written per channel pair, the MAE sin-cos table written with numpy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

NEG = -1e30


def d64(sd: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return sd[key].detach().to(torch.float64)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def linear(x: torch.Tensor, sd: dict, prefix: str, bias: bool = True) -> torch.Tensor:
    y = x @ d64(sd, prefix + ".weight").T
    return y + d64(sd, prefix + ".bias") if bias else y


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, add_mask=None) -> torch.Tensor:
    """q (B, H, Lq, d), k/v (B, H, Lk, d), optional additive mask broadcastable to (B, H, Lq, Lk)."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if add_mask is not None:
        s = s + add_mask
    return torch.softmax(s, -1) @ v


# ----------------------------------------------------------------------------- CLIP
def clip_hidden_states(sd: dict, cfg, pixels: torch.Tensor, prefix: str) -> list[torch.Tensor]:
    """All hidden states (embeddings first) of a CLIP vision model, float64."""
    p, g, d, h = cfg.patch_size, cfg.grid_size, cfg.hidden_size, cfg.num_heads
    pixels = pixels.to(torch.float64)
    w = d64(sd, prefix + "embeddings.patch_embedding.weight").reshape(d, -1)
    tokens = []
    for r in range(g):
        for c in range(g):
            patch = pixels[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p].reshape(pixels.shape[0], -1)
            tokens.append(patch @ w.T)
    x = torch.stack(tokens, 1)
    cls = d64(sd, prefix + "embeddings.class_embedding").expand(x.shape[0], 1, d)
    x = torch.cat([cls, x], 1) + d64(sd, prefix + "embeddings.position_embedding.weight")
    x = layer_norm(x, d64(sd, prefix + "pre_layrnorm.weight"), d64(sd, prefix + "pre_layrnorm.bias"))
    states = [x]
    for i in range(cfg.num_layers):
        lp = f"{prefix}encoder.layers.{i}."
        y = layer_norm(x, d64(sd, lp + "layer_norm1.weight"), d64(sd, lp + "layer_norm1.bias"))
        b, n, _ = y.shape

        def split(t, b=b, n=n):
            return t.view(b, n, h, d // h).transpose(1, 2)

        o = softmax_attention(
            split(linear(y, sd, lp + "self_attn.q_proj")),
            split(linear(y, sd, lp + "self_attn.k_proj")),
            split(linear(y, sd, lp + "self_attn.v_proj")),
        )
        x = x + linear(o.transpose(1, 2).reshape(b, n, d), sd, lp + "self_attn.out_proj")
        y = layer_norm(x, d64(sd, lp + "layer_norm2.weight"), d64(sd, lp + "layer_norm2.bias"))
        y = linear(y, sd, lp + "mlp.fc1")
        x = x + linear(y * torch.sigmoid(1.702 * y), sd, lp + "mlp.fc2")
        states.append(x)
    return states


# ------------------------------------------------------------------ sin-cos / resampler
def mae_sincos(dim: int, grid: int) -> np.ndarray:
    """MAE 2D table: first half encodes the column, second half the row."""
    out = np.zeros((grid * grid, dim))
    quarter = dim // 4
    for r in range(grid):
        for c in range(grid):
            row = []
            for pos in (c, r):
                ang = [pos / 10000 ** (k / quarter) for k in range(quarter)]
                row += [math.sin(a) for a in ang] + [math.cos(a) for a in ang]
            out[r * grid + c] = row
    return out


def resampler(sd: dict, prefix: str, x: torch.Tensor, num_heads: int):
    """The official Resampler math through torch's own nn.MultiheadAttention, float64."""
    x = x.to(torch.float64)
    q = d64(sd, prefix + "query")
    d = q.shape[1]
    c = math.isqrt(q.shape[0])
    pos_q = torch.from_numpy(mae_sincos(d, c))
    n = math.isqrt(x.shape[1])
    pos_k = pos_q
    if n != c:
        pos_k = F.interpolate(
            pos_q.float().reshape(1, c, c, d).permute(0, 3, 1, 2), size=(n, n), mode="bicubic", align_corners=False
        )
        pos_k = pos_k.permute(0, 2, 3, 1).reshape(n * n, d).double()
    mha = torch.nn.MultiheadAttention(d, num_heads, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(sd[prefix + "attn.in_proj_weight"])
        mha.in_proj_bias.copy_(sd[prefix + "attn.in_proj_bias"])
        mha.out_proj.weight.copy_(sd[prefix + "attn.out_proj.weight"])
        mha.out_proj.bias.copy_(sd[prefix + "attn.out_proj.bias"])
        xn = layer_norm(x, d64(sd, prefix + "ln_kv.weight"), d64(sd, prefix + "ln_kv.bias"))
        qn = layer_norm(q, d64(sd, prefix + "ln_q.weight"), d64(sd, prefix + "ln_q.bias")) + pos_q
        out, attn = mha(qn.expand(x.shape[0], -1, -1), xn + pos_k, xn)
    return out, attn, pos_q


# ----------------------------------------------------------------------------- LLaMA
def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def rope(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, d), pos (B, L): channel i pairs with channel i + d/2 (HF convention)."""
    half = x.shape[-1] // 2
    ang = pos.to(torch.float64)[:, None, :, None] * inv_freq.to(torch.float64)  # (B, 1, L, d/2)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()], -1)


def plain_inv_freq(tcfg) -> torch.Tensor:
    d = tcfg.head_dim
    return torch.tensor([1.0 / tcfg.rope_theta ** (2 * i / d) for i in range(d // 2)], dtype=torch.float64)


def hf_mask(valid: torch.Tensor) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: causal, and keys with valid == False hidden."""
    n = valid.shape[1]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    ok = causal[None] & valid[:, None, :]
    return torch.where(ok, 0.0, NEG).to(torch.float64)[:, None]


def llama_layer(sd: dict, lp: str, tcfg, x, pos, add_mask, inv_freq) -> torch.Tensor:
    b, n, _ = x.shape
    h, hk, hd = tcfg.num_heads, tcfg.num_kv_heads, tcfg.head_dim
    y = rms_norm(x, d64(sd, lp + "input_layernorm.weight"), tcfg.rms_norm_eps)
    q = linear(y, sd, lp + "self_attn.q_proj", False).view(b, n, h, hd).transpose(1, 2)
    k = linear(y, sd, lp + "self_attn.k_proj", False).view(b, n, hk, hd).transpose(1, 2)
    v = linear(y, sd, lp + "self_attn.v_proj", False).view(b, n, hk, hd).transpose(1, 2)
    q, k = rope(q, pos, inv_freq), rope(k, pos, inv_freq)
    k = torch.stack([k[:, j // (h // hk)] for j in range(h)], 1)  # query head j reads kv head j // group
    v = torch.stack([v[:, j // (h // hk)] for j in range(h)], 1)
    o = softmax_attention(q, k, v, add_mask).transpose(1, 2).reshape(b, n, h * hd)
    x = x + linear(o, sd, lp + "self_attn.o_proj", False)
    y = rms_norm(x, d64(sd, lp + "post_attention_layernorm.weight"), tcfg.rms_norm_eps)
    gate = linear(y, sd, lp + "mlp.gate_proj", False)
    up = linear(y, sd, lp + "mlp.up_proj", False)
    return x + linear(gate * torch.sigmoid(gate) * up, sd, lp + "mlp.down_proj", False)


def projector(sd: dict, x: torch.Tensor) -> torch.Tensor:
    y = linear(x.to(torch.float64), sd, "model.mm_projector.0")
    y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    return linear(y, sd, "model.mm_projector.2")


# ------------------------------------------------------------------------- pipeline
CLIP_PREFIX = "model.vision_tower.vision_tower.vision_model."


def clip_features(sd: dict, cfg, pixels: torch.Tensor) -> torch.Tensor:
    """hidden_states[-2] without CLS."""
    return clip_hidden_states(sd, cfg.vision, pixels, CLIP_PREFIX)[cfg.vision.select_layer][:, 1:]


def prefusion_official(sd: dict, cfg, images: torch.Tensor, input_ids: torch.Tensor, inv_freq=None):
    """encode_images_mini written out step by step, for one image per sample (parts == 1 or HD)."""
    b, parts = images.shape[:2]
    emb = d64(sd, "model.embed_tokens.weight")[input_ids.clamp(min=0)]
    pad = input_ids <= 0
    feats = clip_features(sd, cfg, images.reshape(b * parts, *images.shape[2:])).reshape(
        b, parts, -1, cfg.vision.hidden_size
    )
    g = cfg.vision.grid_size
    if parts == 1:
        comp_in = feats[:, 0]
        vision = projector(sd, feats[:, 0])
    else:
        r = math.isqrt(parts - 1)
        big = torch.zeros(b, r * g, r * g, feats.shape[-1], dtype=torch.float64)
        big_proj = torch.zeros(b, r * g, r * g, cfg.text.hidden_size, dtype=torch.float64)
        proj = projector(sd, feats[:, :-1])
        for i in range(r):
            for j in range(r):
                big[:, i * g : (i + 1) * g, j * g : (j + 1) * g] = feats[:, i * r + j].reshape(b, g, g, -1)
                big_proj[:, i * g : (i + 1) * g, j * g : (j + 1) * g] = proj[:, i * r + j].reshape(b, g, g, -1)
        comp_in = big.reshape(b, -1, feats.shape[-1])
        vision = torch.cat([big_proj.reshape(b, -1, cfg.text.hidden_size), projector(sd, feats[:, -1])], 1)
    comp, _, _ = resampler(sd, "model.compressor.", comp_in, cfg.compressor_heads)
    comp = projector(sd, comp)
    x = torch.cat([vision, comp, emb], 1)
    valid = torch.cat([torch.ones(b, vision.shape[1] + comp.shape[1], dtype=torch.bool), ~pad], 1)
    pos = torch.where(valid, valid.long().cumsum(-1) - 1, torch.ones_like(valid, dtype=torch.long))
    mask = hf_mask(valid)
    inv_freq = plain_inv_freq(cfg.text) if inv_freq is None else inv_freq
    for i in range(cfg.prefusion_layers):
        x = llama_layer(sd, f"model.prefusion_layers.{i}.", cfg.text, x, pos, mask, inv_freq)
    n_text, n_q = input_ids.shape[1], comp.shape[1]
    text = x[:, -n_text:] * (~pad)[..., None] + emb * pad[..., None]
    return x[:, -n_text - n_q : -n_text], text, x


def llm_logits(sd: dict, cfg, embeds: torch.Tensor, inv_freq=None) -> torch.Tensor:
    """Logits of a single unpadded sequence of embeddings (B, L, hidden), positions 0..L-1."""
    b, n, _ = embeds.shape
    pos = torch.arange(n)[None].expand(b, n)
    mask = hf_mask(torch.ones(b, n, dtype=torch.bool))
    inv_freq = plain_inv_freq(cfg.text) if inv_freq is None else inv_freq
    x = embeds.to(torch.float64)
    for i in range(cfg.text.num_layers):
        x = llama_layer(sd, f"model.layers.{i}.", cfg.text, x, pos, mask, inv_freq)
    return linear(rms_norm(x, d64(sd, "model.norm.weight"), cfg.text.rms_norm_eps), sd, "lm_head", False)
