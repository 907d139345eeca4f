"""FusedPreFusion: LLaVA-Mini's modality pre-fusion without the official code's redundant work.

The official pre-fusion runs ``num_layers`` LLaMA decoder layers (HF ``LlamaDecoderLayer``:
RMSNorm, RoPE, GQA attention, SwiGLU; no final norm) over ``[vision (Nv), compressed (Q),
text (L)]`` with a causal mask, padded text positions hidden as keys, position ids
``cumsum(not padded) - 1`` (padded positions get 1), and keeps only the last ``Q + L`` rows
(padded text rows get their raw embeddings back). This module gives the same kept rows while

1. **pruning the last layer**: there only the kept rows get a query, attention output,
   O-projection and MLP; the vision rows contribute K and V only;
2. **caching the vision prefix**: under the causal mask the ``Nv + Q`` prefix rows never see
   the text, so their per-layer K/V and the compressed outputs depend on the image alone.
   :meth:`FusedPreFusion.prefill` computes them once; :meth:`FusedPreFusion.fuse` runs only the
   ``L`` text rows of a question against the cached K/V (positions continue at ``Nv + Q``);
3. **batching frames**: :meth:`FusedPreFusion.fuse_video` runs a chunk of frames' prefixes as
   one batch and the shared question against every frame of the chunk in one batched call,
   accumulating the float32 sum over frames (the official mean), so memory grows with the
   chunk, not with the video.

Parameter names are those of HF ``LlamaDecoderLayer`` (``layers.{i}.self_attn.q_proj.weight``,
``layers.{i}.mlp.gate_proj.weight``, ``layers.{i}.input_layernorm.weight``, ...), so the
pre-fusion layers of the reference model (``model.prefusion_layers``) or of an HF checkpoint
load directly; :meth:`FusedPreFusion.from_layers` shares the parameters instead of copying.
Attention runs through :func:`lmini_kernels.prefusion_attention` (suffix queries over a
prefix, bottom-right causal, key padding, GQA).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

import lmini_kernels
from lmini_kernels.checks import check_int, check_positive_float
from lmini_kernels.modules.llama import LlamaDecoderLayer, rope_tables

__all__ = ["FusedPreFusion", "PrefusionCache"]


@dataclass
class PrefusionCache:
    """What a question needs from one image (or a batch of images/frames).

    ``keys[l]``, ``values[l]``: (B, P, Hkv, d) keys (RoPE applied) and values of the P = Nv + Q
    prefix rows in layer l; ``compressed``: (B, Q, hidden), the pre-fusion output of the Q
    compressed rows (question-independent).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    compressed: torch.Tensor

    @property
    def prefix_len(self) -> int:
        return self.keys[0].shape[1]

    @property
    def batch(self) -> int:
        return self.compressed.shape[0]

    def nbytes(self) -> int:
        """Bytes held by the cache."""
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values, self.compressed])


class FusedPreFusion(nn.Module):
    """LLaVA-Mini pre-fusion with last-layer pruning, a vision-prefix cache and batched frames.

    Args:
        hidden_size, num_heads, num_kv_heads, intermediate_size, num_layers, rms_norm_eps: the
            LLaMA layer shapes (the LLM's own; 4096 / 32 / 32 / 11008 / 4 / 1e-5 for
            LLaVA-Mini on Vicuna-7B).
        inv_freq: RoPE inverse frequencies (head_dim / 2,), float32, already scaled for
            LLaMA-3.1 if the LLM uses that scaling.
        backend: backend of :func:`lmini_kernels.prefusion_attention`.

    Use :meth:`forward` for one question, or :meth:`prefill` once per image and :meth:`fuse`
    per question, or :meth:`fuse_video` for a video. Inputs are in the parameters' dtype.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        intermediate_size: int,
        num_layers: int,
        rms_norm_eps: float,
        inv_freq: torch.Tensor,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in [("hidden_size", hidden_size), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads),
                            ("intermediate_size", intermediate_size), ("num_layers", num_layers)]:  # fmt: skip
            check_int(name, value)
        check_positive_float("rms_norm_eps", rms_norm_eps)
        if hidden_size % num_heads or num_heads % num_kv_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must divide into num_heads ({num_heads}) and num_heads into "
                f"num_kv_heads ({num_kv_heads})"
            )
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        if inv_freq.shape != (self.head_dim // 2,):
            raise ValueError(f"inv_freq: expected shape ({self.head_dim // 2},), got {tuple(inv_freq.shape)}")
        self.backend = backend
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(hidden_size, num_heads, num_kv_heads, intermediate_size, rms_norm_eps)
            for _ in range(num_layers)
        )
        self.register_buffer("inv_freq", inv_freq.detach().float().clone(), persistent=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_layers(
        cls,
        layers: Iterable[nn.Module],
        *,
        num_heads: int,
        num_kv_heads: int,
        rms_norm_eps: float,
        inv_freq: torch.Tensor,
        backend: str = "auto",
    ) -> FusedPreFusion:
        """Wrap existing decoder layers with HF ``LlamaDecoderLayer`` parameter names (the
        reference model's ``model.prefusion_layers``, or HF layers) *sharing* their parameters."""
        layers = list(layers)
        first = layers[0]
        hidden = first.self_attn.q_proj.weight.shape[1]
        inter = first.mlp.gate_proj.weight.shape[0]
        with torch.device("meta"):
            m = cls(hidden, num_heads, num_kv_heads, inter, len(layers), rms_norm_eps, inv_freq, backend=backend)
        m.inv_freq = inv_freq.detach().float().clone()  # a real buffer, on the caller's device
        for dst, src in zip(m.layers, layers, strict=True):
            for name, _ in list(dst.named_parameters()):
                owner, leaf = name.rsplit(".", 1)
                p = src.get_parameter(name)
                if p.shape != dst.get_parameter(name).shape:
                    raise ValueError(f"layers: parameter {name} has shape {tuple(p.shape)}, expected {tuple(_.shape)}")
                setattr(dst.get_submodule(owner), leaf, p)
        return m

    # ------------------------------------------------------------------ building blocks
    def _rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_tables(position_ids, self.inv_freq, dtype)

    def _run_layers(self, x, cos, sin, mask, keep_from: int):
        """Every layer over the rows of x (B, S, hidden), the last one pruned to rows
        ``keep_from:`` (there the other rows give K and V only). Returns (the kept rows after
        the last layer, every layer's keys, every layer's values)."""
        keys, values = [], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)
            k, v = layer.self_attn.project_kv(h, cos, sin)
            if i == last:  # pruned: Q, attention output, O and MLP only for the kept rows
                h, x, cos, sin = h[:, keep_from:], x[:, keep_from:], cos[:, keep_from:], sin[:, keep_from:]
            x = layer.finish(x, self._attend(layer.self_attn.project_q(h, cos, sin), k, v, mask))
            keys.append(k)
            values.append(v)
        return x, keys, values

    def _attend(self, q, k, v, mask):
        # through the package attribute, so that a patched lmini_kernels.prefusion_attention
        # (tests, profilers) sees these calls as it sees the reference model's
        return lmini_kernels.prefusion_attention(q, k, v, causal=True, key_padding_mask=mask, backend=self.backend)

    # ------------------------------------------------------------------ public API
    def prefill(self, vision_tokens: torch.Tensor, compressed_tokens: torch.Tensor) -> PrefusionCache:
        """The question-independent part: vision (B, Nv, hidden) and compressed (B, Q, hidden)
        tokens -> a :class:`PrefusionCache` with every layer's prefix K/V and the Q compressed
        output rows. The last layer computes only K/V for the vision rows."""
        _check_tokens("vision_tokens", vision_tokens, self)
        _check_tokens("compressed_tokens", compressed_tokens, self)
        if compressed_tokens.shape[0] != vision_tokens.shape[0]:
            raise ValueError(
                f"compressed_tokens: batch {compressed_tokens.shape[0]} != vision_tokens batch {vision_tokens.shape[0]}"
            )
        if compressed_tokens.shape[1] < 1:
            raise ValueError("compressed_tokens: expected at least one compressed token (C*C >= 1)")
        x = torch.cat([vision_tokens, compressed_tokens], dim=1)
        b, p, _ = x.shape
        cos, sin = self._rope(torch.arange(p, device=x.device).expand(b, p), x.dtype)
        x, keys, values = self._run_layers(x, cos, sin, None, p - compressed_tokens.shape[1])
        return PrefusionCache(keys, values, x)

    def fuse(
        self,
        cache: PrefusionCache,
        text_embeds: torch.Tensor,
        text_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one question's text rows (B, L, hidden) against a cached prefix.

        ``text_padding_mask`` (B, L) bool, True = padded (official: input id <= 0, which
        includes the image placeholder): those positions are hidden as keys and get their raw
        embeddings back. A cache of batch 1 serves a batch of questions. Returns
        (compressed (B, Q, hidden) from the cache, fused text (B, L, hidden)).
        """
        _check_tokens("text_embeds", text_embeds, self)
        b, n, _ = text_embeds.shape
        if cache.batch not in (1, b):
            raise ValueError(f"text_embeds: batch {b} does not match the cache batch {cache.batch}")
        text_padding_mask = _check_mask(text_padding_mask, b, n, text_embeds.device)
        p = cache.prefix_len
        keep = ~text_padding_mask
        pos = (p + keep.long().cumsum(-1) - 1).masked_fill(text_padding_mask, 1)  # official: padded -> 1
        cos, sin = self._rope(pos, text_embeds.dtype)
        mask = torch.cat([text_padding_mask.new_zeros(b, p), text_padding_mask], dim=1)
        x = text_embeds
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)
            k, v = layer.self_attn.project_kv(h, cos, sin)
            ck, cv = cache.keys[i], cache.values[i]
            if ck.shape[0] != b:
                ck, cv = ck.expand(b, -1, -1, -1), cv.expand(b, -1, -1, -1)
            o = self._attend(
                layer.self_attn.project_q(h, cos, sin), torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1), mask
            )
            x = layer.finish(x, o)
        fused = torch.where(text_padding_mask[..., None], text_embeds, x)
        compressed = cache.compressed if cache.batch == b else cache.compressed.expand(b, -1, -1)
        return compressed, fused

    def forward(
        self,
        vision_tokens: torch.Tensor,
        compressed_tokens: torch.Tensor,
        text_embeds: torch.Tensor,
        text_padding_mask: torch.Tensor | None = None,
        *,
        return_cache: bool = False,
    ):
        """One question about one image per sample, in one pass over ``[vision, compressed, text]``
        (large GEMMs) with the last layer pruned: equal to ``fuse(prefill(vision, compressed),
        text, mask)``. Returns (compressed (B, Q, hidden), fused text (B, L, hidden)), plus the
        :class:`PrefusionCache` of the image for follow-up questions when ``return_cache``."""
        _check_tokens("vision_tokens", vision_tokens, self)
        _check_tokens("compressed_tokens", compressed_tokens, self)
        _check_tokens("text_embeds", text_embeds, self)
        b, n, _ = text_embeds.shape
        if vision_tokens.shape[0] != b or compressed_tokens.shape[0] != b:
            raise ValueError(
                f"vision_tokens, compressed_tokens, text_embeds: batches differ ({vision_tokens.shape[0]}, "
                f"{compressed_tokens.shape[0]}, {b})"
            )
        text_padding_mask = _check_mask(text_padding_mask, b, n, text_embeds.device)
        nq = compressed_tokens.shape[1]
        p = vision_tokens.shape[1] + nq
        x = torch.cat([vision_tokens, compressed_tokens, text_embeds], dim=1)
        mask = torch.cat([text_padding_mask.new_zeros(b, p), text_padding_mask], dim=1)
        keep = ~mask
        pos = (keep.long().cumsum(-1) - 1).masked_fill(mask, 1)  # official: padded -> 1
        cos, sin = self._rope(pos, x.dtype)
        x, keys, values = self._run_layers(x, cos, sin, mask, p - nq)
        compressed = x[:, :nq]
        fused = torch.where(text_padding_mask[..., None], text_embeds, x[:, nq:])
        if not return_cache:
            return compressed, fused
        cache = PrefusionCache([k[:, :p] for k in keys], [v[:, :p] for v in values], compressed)
        return compressed, fused, cache

    def fuse_video_sum(
        self,
        chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
        text_embeds: torch.Tensor,
        text_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """:meth:`fuse_video` before the mean: (compressed tokens of every frame in frame order
        (B, T * Q, hidden), the float32 *sum* of the fused text over the T frames (B, L, hidden),
        T). No chunk at all is allowed (T = 0: tokens (B, 0, hidden), a zero sum), so that a
        share of a video split across workers may be empty; the sums of consecutive shares add
        up to the whole video's sum."""
        b, n, h = text_embeds.shape
        if text_padding_mask is None:
            text_padding_mask = torch.zeros(b, n, dtype=torch.bool, device=text_embeds.device)
        tokens, frames = [], 0
        total = torch.zeros(b, n, h, dtype=torch.float32, device=text_embeds.device)
        for vision, compressed in chunks:
            if vision.dim() != 4 or compressed.dim() != 4 or vision.shape[:2] != compressed.shape[:2]:
                raise ValueError(
                    "chunks: expected (vision (B, T_c, Nv, hidden), compressed (B, T_c, Q, hidden)), got "
                    f"{tuple(vision.shape)} and {tuple(compressed.shape)}"
                )
            if vision.shape[0] != b:
                raise ValueError(f"chunks: batch {vision.shape[0]} does not match text_embeds batch {b}")
            tc = vision.shape[1]
            text = text_embeds[:, None].expand(b, tc, n, h).flatten(0, 1)
            mask = text_padding_mask[:, None].expand(b, tc, n).flatten(0, 1)
            comp, fused = self(vision.flatten(0, 1), compressed.flatten(0, 1), text, mask)  # hooks see each chunk
            # a copy: the slice would pin every row of the chunk's last activations (Q + L per frame)
            tokens.append(comp.unflatten(0, (b, tc)).flatten(1, 2).contiguous())
            total += fused.float().unflatten(0, (b, tc)).sum(1)
            frames += tc
        if not tokens:
            tokens.append(text_embeds.new_zeros(b, 0, h))
        return torch.cat(tokens, dim=1), total, frames

    def fuse_video(
        self,
        chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
        text_embeds: torch.Tensor,
        text_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A video, chunk by chunk: each chunk is (vision (B, T_c, Nv, hidden), compressed
        (B, T_c, Q, hidden)) for T_c consecutive frames (a generator may produce them lazily,
        e.g. running CLIP per chunk). Every frame's prefix and the shared question (B, L, hidden)
        run as one batch of B * T_c; the fused text is summed over frames in float32
        (:meth:`fuse_video_sum`).

        Returns (compressed tokens of every frame in frame order (B, T * Q, hidden), the float32
        mean of the fused text over the T frames, cast back (B, L, hidden)), as the official
        per-frame loop."""
        tokens, total, frames = self.fuse_video_sum(chunks, text_embeds, text_padding_mask)
        if frames == 0:
            raise ValueError("chunks: expected at least one frame")
        return tokens, (total / frames).to(text_embeds.dtype)


def _check_mask(mask: torch.Tensor | None, b: int, n: int, device) -> torch.Tensor:
    if mask is None:
        return torch.zeros(b, n, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor) or mask.shape != (b, n) or mask.dtype != torch.bool:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"text_padding_mask: expected a bool tensor of shape ({b}, {n}), got {got}")
    return mask


def _check_tokens(name: str, t: torch.Tensor, m: FusedPreFusion) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    w = m.layers[0].self_attn.q_proj.weight
    hidden = w.shape[1]
    if t.dim() != 3 or t.shape[-1] != hidden:
        raise ValueError(f"{name}: expected shape (B, L, {hidden}), got {tuple(t.shape)}")
    if t.dtype != w.dtype:
        raise TypeError(f"{name}: dtype {t.dtype} differs from the parameters' {w.dtype}; cast one to the other")
    if t.device != w.device:
        raise ValueError(f"{name}: on {t.device} but the parameters are on {w.device}")
