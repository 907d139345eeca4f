"""The reference LLaVA-Mini model: CLIP -> compressor -> projector -> pre-fusion -> LLaMA.

Module and parameter names follow the official checkpoint (``model.vision_tower``,
``model.mm_projector``, ``model.compressor``, ``model.prefusion_layers``, ``model.layers``,
``model.embed_tokens``, ``model.norm``, ``lm_head``). The compressor and the pre-fusion
attention call the library's public ops (``lmini_kernels.compress`` and
``lmini_kernels.prefusion_attention``) with the model's ``backend`` (``"auto"`` by default,
``"reference"`` for pure PyTorch end to end), so fused kernels plug in without model changes.

Semantics follow the official code (``llavamini_arch.py``: ``Resampler``,
``encode_images_mini``, ``prepare_inputs_labels_for_multimodal``) where it differs from
the paper; see each method's docstring.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn

import lmini_kernels
from lmini_kernels.checks import check_int, square_side
from lmini_kernels.modules.llama import RMSNorm

from .clip import CLIPVisionTower
from .config import IMAGE_TOKEN_INDEX, LlavaMiniConfig
from .llama import KVCache, RotaryEmbedding, cached_attention, decoder_layer

__all__ = [
    "LlavaMini", "LlavaMiniModel", "Resampler", "retile_hd", "MultimodalInputs", "StageModule", "sample_next_token",
]  # fmt: skip


class Resampler(nn.Module):
    """The official compressor: C*C learnable queries cross-attend to the CLIP features.

    Parameter names match the official ``Resampler`` (``query``, ``pos_embed``, ``ln_q``,
    ``ln_kv``, ``attn.in_proj_weight`` ...; ``kv_proj`` only when ``kv_dim != embed_dim``,
    never the case in the released models). ``attn`` is an ``nn.MultiheadAttention`` used only
    as the container of the packed in/out projections; the math runs in
    ``lmini_kernels.compress``. As in the official forward, the *query* positions are the
    C x C table itself and the *key* positions are that table bicubically resized to the
    feature grid; values carry no position.
    """

    def __init__(self, grid_size: int, embed_dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        self.grid_size, self.embed_dim, self.num_heads = grid_size, embed_dim, num_heads
        q = grid_size * grid_size
        self.pos_embed = nn.Parameter(torch.empty(q, embed_dim), requires_grad=False)
        self.query = nn.Parameter(torch.empty(q, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim not in (None, embed_dim) else None
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim)
        self.ln_kv = nn.LayerNorm(embed_dim)
        self.reset_positions()

    @torch.no_grad()
    def reset_positions(self) -> None:
        """Fill ``pos_embed`` with the fixed 2D sin-cos table (no-op on the meta device)."""
        if not self.pos_embed.is_meta:
            table = lmini_kernels.get_2d_sincos_pos_embed(self.embed_dim, self.grid_size)
            self.pos_embed.copy_(table.to(self.pos_embed.dtype))

    def forward(
        self, x: torch.Tensor, *, need_weights: bool = False, backend: str = "auto"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, kv_dim), N a square -> (out (B, C*C, D), head-averaged attn (B, C*C, N) or None)."""
        pos_k = lmini_kernels.compress_positions(self.pos_embed, x.shape[1]).to(x.dtype)
        w = lmini_kernels.CompressWeights.from_module(self, pos_k)
        w.pos_q = self.pos_embed.to(x.dtype)
        return lmini_kernels.compress(x, w, need_weights=need_weights, backend=backend)


def build_projector(in_dim: int, out_dim: int, projector_type: str = "mlp2x_gelu") -> nn.Module:
    """The official ``build_vision_projector``: ``mlp2x_gelu`` is Linear -> GELU -> Linear (keys
    ``mm_projector.0.*`` and ``mm_projector.2.*``); ``linear`` one Linear (``mm_projector.weight``,
    ``mm_projector.bias``)."""
    if projector_type == "linear":
        return nn.Linear(in_dim, out_dim)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"projector_type: expected 'linear' or 'mlp2x_gelu', got {projector_type!r}")


def retile_hd(features: torch.Tensor, ratio: int) -> torch.Tensor:
    """Re-tile ratio*ratio sub-image grids into one big grid, row-major.

    ``features`` (B, ratio*ratio, g*g, D), sub-images in the official split order (row of
    blocks first, then column) -> (B, (ratio*g)**2, D) where big-grid cell (R, Q) holds
    sub-image (R // g, Q // g), cell (R % g, Q % g). This is the official
    ``view(...).transpose(2, 3)`` re-tiling (with its ``split_ratio`` fixed at 1).
    """
    b, parts, n, d = features.shape
    g = square_side(n, "features.shape[2] (tokens per sub-image)")
    if parts != ratio * ratio:
        raise ValueError(f"expected {ratio * ratio} sub-images, got {parts}")
    x = features.reshape(b, ratio, ratio, g, g, d).permute(0, 1, 3, 2, 4, 5)  # (b, bi, r, bj, c, d)
    return x.reshape(b, ratio * g * ratio * g, d)


class StageModule(NamedTuple):
    """One module of a pipeline stage (:meth:`LlavaMini.stages`)."""

    stage: str  # "vit", "compression", "projector", "prefusion", "embed", "llm", "norm", "lm_head"
    label: str  # the stage, or "<stage>.<i>" for the i-th layer of a stage made of layers
    path: str  # the module's path from the model ("model.layers.7")
    module: nn.Module


class MultimodalInputs:
    """What the LLM receives: padded embeddings, a validity mask and position ids."""

    def __init__(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> None:
        self.inputs_embeds, self.attention_mask, self.position_ids = inputs_embeds, attention_mask, position_ids

    @property
    def num_tokens(self) -> torch.Tensor:
        """Real tokens per sample, (B,)."""
        return self.attention_mask.sum(-1)


class LlavaMiniModel(nn.Module):
    """``model.*`` of the checkpoint: the LLaMA body plus the multimodal modules."""

    def __init__(self, config: LlavaMiniConfig) -> None:
        super().__init__()
        t, v = config.text, config.vision
        self.embed_tokens = nn.Embedding(t.vocab_size, t.hidden_size)
        self.layers = nn.ModuleList(decoder_layer(t) for _ in range(t.num_layers))
        self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(t)  # no parameters; shared by LLM and pre-fusion
        self.vision_tower = CLIPVisionTower(v)
        self.mm_projector = build_projector(v.hidden_size, t.hidden_size, config.projector_type)
        if config.is_mini:
            self.prefusion_layers = nn.ModuleList(decoder_layer(t) for _ in range(config.prefusion_layers))
            # official: Resampler(grid_size=C, embed_dim=1024 (= CLIP width), num_heads=8)
            self.compressor = Resampler(config.compressor_size, v.hidden_size, config.compressor_heads)


class LlavaMini(nn.Module):
    """LLaVA-Mini (or, with ``compressor_size=None``, the LLaVA-v1.5 baseline).

    Stage methods, usable and timeable on their own: :meth:`encode_images` (CLIP),
    :meth:`compress`, :meth:`project`, :meth:`prefusion`, :meth:`encode_images_mini` (one
    image or frame through all of these), :meth:`encode_multimodal` (image / HD / video
    dispatch), :meth:`prepare_inputs` (splice into the text), :meth:`forward` (LLM logits) and
    :meth:`generate` (greedy decoding with a KV cache).

    Image tensors: ``(B, 3, H, W)``, ``(B, parts, 3, H, W)`` (parts = 1, or ratio**2 + 1
    for HD, the global view last) or, for video, ``(B, T, parts, 3, H, W)``.
    """

    def __init__(self, config: LlavaMiniConfig, *, backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.backend = backend
        self.model = LlavaMiniModel(config)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)

    #: The pipeline's stages, in order, and the submodules (paths from this model) that run them.
    #: Profilers, NVTX ranges and the memory suite read :meth:`stages`, never attribute names.
    STAGES: dict[str, tuple[str, ...]] = {
        "vit": ("model.vision_tower",),
        "compression": ("model.compressor",),
        "projector": ("model.mm_projector",),
        "prefusion": ("model.prefusion_layers",),
        "embed": ("model.embed_tokens",),
        "llm": ("model.layers",),
        "norm": ("model.norm",),
        "lm_head": ("lm_head",),
    }

    #: Frames per batched pre-fusion chunk on the fused video path, per device type: 16 on a GPU
    #: (GEMMs of ~10k rows); 4 on a CPU, where a 16-frame chunk's activations (16 x 620 x MLP
    #: width x 4 B, ~110 MB at hidden 1024) fall out of the caches and measured slower
    #: (interleaved runs, 2-core EPYC: ~270 ms/frame with 1 or 4 frames, ~320 ms/frame with 16).
    VIDEO_CHUNK_FRAMES: dict[str, int] = {"cuda": 16, "cpu": 4}

    #: ``prefusion=`` values of the encoding methods: "auto" takes "fused" unless the backend is
    #: "reference"; "official" runs every row of every layer (the official computation).
    PREFUSION_PATHS = ("auto", "fused", "official")

    # ----------------------------------------------------------------- utilities
    def stages(self) -> list[StageModule]:
        """Every module of :attr:`STAGES` present in this model, in pipeline order; a ModuleList
        gives one entry per layer (label ``<stage>.<i>``, path ``<path>.<i>``). Stages the
        config lacks (the LLaVA-v1.5 baseline has no compressor and no pre-fusion) are absent."""
        out: list[StageModule] = []
        for stage, paths in self.STAGES.items():
            for path in paths:
                try:
                    mod = self.get_submodule(path)
                except AttributeError:
                    continue
                if isinstance(mod, nn.ModuleList):
                    out += [StageModule(stage, f"{stage}.{i}", f"{path}.{i}", m) for i, m in enumerate(mod)]
                else:
                    out.append(StageModule(stage, stage, path, mod))
        return out

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @torch.no_grad()
    def init_random_weights(self, seed: int = 0, std: float = 0.02) -> LlavaMini:
        """Deterministic random weights: normal(0, std) for matrices and biases, 1 + normal(0, std)
        for norm scales (not exactly 1, so tests notice a mis-wired norm), the fixed sin-cos
        table in the compressor. Returns ``self``."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("pos_embed"):
                continue
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(s in name for s in ("norm", "layernorm", "ln_q", "ln_kv", "layrnorm", "layer_norm"))
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(noise + 1.0 if is_norm and leaf == "weight" else noise)
        if self.config.is_mini:
            self.model.compressor.reset_positions()
        return self

    @torch.no_grad()
    def materialize_buffers(self, device: torch.device | str) -> None:
        """Rebuild the non-persistent buffers (RoPE frequencies) on ``device``, e.g. after
        loading weights into a model built on the meta device."""
        self.model.rotary_emb = RotaryEmbedding(self.config.text).to(device)

    @classmethod
    def from_pretrained(
        cls,
        directory: str,
        config: LlavaMiniConfig,
        *,
        dtype: torch.dtype | None = None,
        device: str = "cpu",
        backend: str = "auto",
        mmap: bool = False,
    ) -> LlavaMini:
        """Build on the meta device (no memory, no init) and load a local checkpoint directory
        (:func:`llava_mini.weights.load_weights`: the parameters own their memory unless
        ``mmap=True``, which leaves them mapped onto the files on CPU). The vision tower's
        weights come from ``config.vision_tower_dir`` (the folder ``mm_vision_tower`` names)
        when the checkpoint has none, as in the official release layout."""
        from .weights import load_weights

        with torch.device("meta"):
            model = cls(config, backend=backend)
        load_weights(model, directory, mmap=mmap, dtype=dtype, vision_tower=config.vision_tower_dir)
        model.to(device=device, dtype=dtype)
        model.materialize_buffers(device)
        return model.eval()

    # ------------------------------------------------------------------ stages
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP: (B, 3, H, W) -> second-to-last layer patch features (B, N, Dv)."""
        return self.model.vision_tower(pixels.to(self.dtype))

    def compress(self, features: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Compressor on CLIP features (B, N, Dv) -> (B, C*C, Dv) (+ attention map)."""
        return self.model.compressor(features, need_weights=need_weights, backend=self.backend)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """mm_projector: (..., Dv) -> (..., hidden)."""
        return self.model.mm_projector(features)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings; negative ids (the image placeholder) are clamped to 0 as officially."""
        return self.model.embed_tokens(input_ids.clamp(min=0))

    def prefusion(self, x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Run the pre-fusion layers over a whole sequence x (B, S, hidden).

        ``padding_mask`` (B, S), True = padded: those keys are hidden; positions are
        ``cumsum(not padded) - 1`` (padded ones get 1, as officially); causal attention through
        ``lmini_kernels.prefusion_attention``. No final norm.
        """
        keep = ~padding_mask
        position_ids = (keep.long().cumsum(-1) - 1).masked_fill(~keep, 1)
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)
        attend = functools.partial(
            lmini_kernels.prefusion_attention, causal=True, key_padding_mask=padding_mask, backend=self.backend
        )
        for layer in self.model.prefusion_layers:
            x = layer(x, cos, sin, attend)
        return x

    def vision_prefix(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The question-independent pre-fusion inputs of one image (or frame) per sample.

        images (B, parts, 3, H, W) -> (projected vision tokens (B, Nv, hidden), projected
        compressed tokens (B, C*C, hidden)). HD: the vision tokens are the re-tiled projected
        sub-image tokens followed by the projected global view's, and the compressor runs on the
        re-tiled sub-image grid, as in the official ``encode_images_mini``.
        """
        b, parts = images.shape[:2]
        clip = self.encode_images(images.flatten(0, 1))  # (b*parts, n, dv)
        if parts == 1:
            compressed, _ = self.compress(clip)
            vision = self.project(clip)
        else:
            ratio = square_side(parts - 1, "images.shape[1] - 1 (HD sub-images)")
            clip = clip.unflatten(0, (b, parts))
            compressed, _ = self.compress(retile_hd(clip[:, :-1], ratio))
            sub = retile_hd(self.project(clip[:, :-1]), ratio)
            vision = torch.cat([sub, self.project(clip[:, -1])], dim=1)
        return vision, self.project(compressed)

    def _fused_prefusion_on(self, prefusion: str) -> bool:
        if prefusion not in self.PREFUSION_PATHS:
            raise ValueError(f"prefusion: expected one of {self.PREFUSION_PATHS}, got {prefusion!r}")
        if self.config.prefusion_layers == 0:  # nothing to fuse (the paper's ablation): one path
            return False
        return prefusion == "fused" or (prefusion == "auto" and self.backend != "reference")

    def fused_prefusion(self, *, backend: str | None = None) -> lmini_kernels.FusedPreFusion:
        """A :class:`lmini_kernels.FusedPreFusion` sharing this model's pre-fusion parameters
        (cheap to build: no copy), with this model's backend unless ``backend`` is given."""
        t = self.config.text
        return lmini_kernels.FusedPreFusion.from_layers(
            self.model.prefusion_layers,
            num_heads=t.num_heads,
            num_kv_heads=t.num_kv_heads,
            rms_norm_eps=t.rms_norm_eps,
            inv_freq=self.model.rotary_emb.inv_freq,
            backend=self.backend if backend is None else backend,
        )

    @property
    def video_chunk_frames(self) -> int:
        """Frames per batched pre-fusion chunk on this model's device (:attr:`VIDEO_CHUNK_FRAMES`)."""
        return self.VIDEO_CHUNK_FRAMES.get(self.device.type, self.VIDEO_CHUNK_FRAMES["cpu"])

    def encode_images_mini(
        self, images: torch.Tensor, input_ids: torch.Tensor, *, prefusion: str = "auto"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image (or frame) per sample through CLIP, compressor, projector and pre-fusion.

        images (B, parts, 3, H, W); input_ids (B, L). Returns (compressed vision tokens
        (B, C*C, hidden), fused text (B, L, hidden)). As in the official ``encode_images_mini``:
        the pre-fusion input is ``[projected CLIP tokens, projected compressed tokens, text]``
        (HD: ``[re-tiled projected sub-image tokens, projected global tokens, compressed, text]``);
        text positions with id <= 0 (padding *and* the image placeholder) are padding; the kept
        rows are the C*C rows just before the text and the last L rows; padded text rows get
        their raw embeddings back. The paper's figure suggests vision tokens also go through
        pre-fusion; the code discards the CLIP rows and keeps only the C*C compressed ones.

        ``prefusion`` (:attr:`PREFUSION_PATHS`): "official" (and "auto" with
        ``backend="reference"``) runs every row of every layer through :meth:`prefusion`;
        "fused" (and "auto" with any other backend) runs :class:`lmini_kernels.FusedPreFusion`
        (last layer pruned to the kept rows), which gives the same kept rows.
        """
        fused = self._fused_prefusion_on(prefusion)
        text = self.embed(input_ids)
        padding = input_ids <= 0
        vision, compressed = self.vision_prefix(images)
        if fused:
            return self.fused_prefusion()(vision, compressed, text, padding)
        return self.official_prefusion(vision, compressed, text, padding)

    def official_prefusion(
        self, vision: torch.Tensor, compressed: torch.Tensor, text: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official pre-fusion of one question: every row of every layer over
        ``[vision (B, Nv, hidden), compressed (B, Q, hidden), text (B, L, hidden)]`` with the text
        rows where ``padding`` (B, L) is True hidden as keys. Returns the kept rows: (compressed
        (B, Q, hidden), fused text (B, L, hidden), padded rows given their raw embeddings back)."""
        b, n_text = padding.shape
        n_q = compressed.shape[1]
        x = torch.cat([vision, compressed, text], dim=1)
        vision_pad = torch.zeros(b, vision.shape[1] + n_q, dtype=torch.bool, device=padding.device)
        x = self.prefusion(x, torch.cat([vision_pad, padding], dim=1))
        fused_text = torch.where(padding[..., None], text, x[:, -n_text:])
        return x[:, -n_text - n_q : -n_text], fused_text

    def encode_video_fused(self, input_ids: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Video on the fused path: frames in chunks of :attr:`video_chunk_frames`, each chunk's
        CLIP, compressor and projector as one batch and its pre-fusion through
        :meth:`lmini_kernels.FusedPreFusion.fuse_video` (the shared question against every frame
        in one batched call, float32 sum over frames). Same result as the per-frame loop of
        :meth:`encode_multimodal` with ``backend="reference"``; memory grows with the chunk."""
        tokens, text_sum, frames = self.encode_video_sum(input_ids, video, prefusion="fused")
        return tokens, self.video_text_mean(text_sum, frames)

    def video_text_mean(self, text_sum: torch.Tensor, frames: int) -> torch.Tensor:
        """The video's text features from :meth:`encode_video_sum`'s float32 sum over ``frames``
        frames: ``sum / frames`` cast to the text embeddings' dtype, as the official loop."""
        if frames < 1:
            raise ValueError(f"video: expected at least one frame, got {frames}")
        return (text_sum / frames).to(self.model.embed_tokens.weight.dtype)

    def encode_video_sum(
        self,
        input_ids: torch.Tensor,
        video: torch.Tensor | Iterable[torch.Tensor],
        *,
        prefusion: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """A video (or a run of consecutive frames of one) before the mean over frames.

        ``video``: a tensor (B, T, parts, 3, H, W) or an iterable of such chunks (consecutive
        frames, in order; a generator may read them lazily). Returns (vision tokens of every
        frame in frame order (B, T * V, hidden), the float32 sum over frames of the text
        features (B, L, hidden), T); T may be 0 (tokens (B, 0, hidden), a zero sum). The video
        result of :meth:`encode_multimodal` is (tokens, (sum / T) cast to the model dtype); the
        sums of consecutive runs of frames add up to the whole video's (``llava_mini.distributed``).
        On the fused path (``prefusion`` as in :meth:`encode_images_mini`) frames run in
        batches of at most :attr:`video_chunk_frames`; otherwise one frame at a time through
        :meth:`encode_images_mini` (or the baseline's per-image path), the official loop.
        """
        if isinstance(video, torch.Tensor):
            video = (video,)
        fused = self._fused_prefusion_on(prefusion)
        step = self.video_chunk_frames if fused else 1

        def pieces():
            for i, chunk in enumerate(video):
                if not isinstance(chunk, torch.Tensor) or chunk.dim() != 6:
                    got = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk).__name__
                    raise ValueError(f"video: chunk {i}: expected a tensor (B, T, parts, 3, H, W), got {got}")
                for t in range(0, chunk.shape[1], step):
                    yield chunk[:, t : t + step]

        if self.config.is_mini and fused:

            def prefixes():
                for clip in pieces():
                    vision, compressed = self.vision_prefix(clip.flatten(0, 1))
                    yield vision.unflatten(0, clip.shape[:2]), compressed.unflatten(0, clip.shape[:2])

            return self.fused_prefusion().fuse_video_sum(prefixes(), self.embed(input_ids), input_ids <= 0)
        if self.config.is_mini:
            encode = functools.partial(self.encode_images_mini, prefusion="official")
        else:
            encode = self.encode_images_baseline
        b, n_text = input_ids.shape
        hidden = self.config.text.hidden_size
        tokens = []
        text_sum = torch.zeros(b, n_text, hidden, dtype=torch.float32, device=self.device)
        frames = 0
        for frame in pieces():
            v, txt = encode(frame[:, 0], input_ids)
            tokens.append(v)
            text_sum += txt.float()
            frames += 1
        if not tokens:
            return torch.zeros(b, 0, hidden, dtype=self.dtype, device=self.device), text_sum, 0
        return torch.cat(tokens, dim=1), text_sum, frames

    def encode_images_baseline(
        self, images: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LLaVA-v1.5: all projected CLIP tokens (B, N, hidden) and the plain text embeddings."""
        if images.shape[1] != 1:
            raise ValueError("the LLaVA-v1.5 baseline takes one view per image")
        return self.project(self.encode_images(images[:, 0])), self.embed(input_ids)

    def encode_multimodal(
        self, input_ids: torch.Tensor, images: torch.Tensor, *, prefusion: str = "auto"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dispatch image / HD / video -> (vision tokens (B, V, hidden), text features (B, L, hidden)).

        ``images`` may also be an iterable of consecutive video chunks (B, t, parts, 3, H, W)
        (e.g. :func:`llava_mini.video.stream_video` chunks with a batch axis added), read lazily
        through :meth:`encode_video_sum`, each chunk checked as :meth:`check_inputs` checks a video.

        Video (6-D images): like the official code, every frame runs the full per-image path
        with the same text; vision tokens are concatenated in frame order and the fused text is
        the float32 mean over frames, cast back. On the official pre-fusion path (``prefusion``
        as in :meth:`encode_images_mini`) one frame at a time, the official loop; on the fused
        path in batched chunks (:meth:`encode_video_fused`).
        """
        fused = self._fused_prefusion_on(prefusion)
        if not isinstance(images, torch.Tensor):  # a video as an iterable of chunks
            checked = self._checked_chunks(images, input_ids.shape[0])
            tokens, text_sum, frames = self.encode_video_sum(input_ids, checked, prefusion=prefusion)
            return tokens, self.video_text_mean(text_sum, frames)
        if images.dim() == 4:
            images = images.unsqueeze(1)
        if self.config.is_mini:
            encode = functools.partial(self.encode_images_mini, prefusion="fused" if fused else "official")
        else:
            encode = self.encode_images_baseline
        if images.dim() == 5:
            return encode(images, input_ids)
        if images.dim() != 6:
            raise ValueError(f"images must be 4-, 5- or 6-D, got shape {tuple(images.shape)}")
        if self.config.is_mini and fused:
            return self.encode_video_fused(input_ids, images)
        tokens, text_sum, frames = self.encode_video_sum(input_ids, images, prefusion="official")
        return tokens, self.video_text_mean(text_sum, frames)

    def check_inputs(
        self, input_ids: torch.Tensor, images: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Validate a batch before any work; returns the bool attention mask (all True if None).

        ``input_ids`` (B, L) integer, each id in [0, vocab) or the image placeholder;
        ``attention_mask`` (B, L) with at least one True per sample; ``images`` floating,
        (B, 3, H, W), (B, parts, 3, H, W) or a video (B, T, parts, 3, H, W) with H = W = the
        vision tower's ``image_size`` and ``parts`` = the config's ``image_parts`` (an HD model
        fed one view would silently run the non-HD path), every pixel finite (a NaN or inf pixel
        would reach every output through the attention, so it is refused here). Each problem is
        a ValueError (TypeError for a dtype) naming the argument."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids: expected a (B, L) tensor, got {got}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids: expected an integer tensor, got {input_ids.dtype}")
        b, n = input_ids.shape
        if n == 0:
            raise ValueError("input_ids: expected at least one token per sample, got L = 0")
        vocab = self.config.text.vocab_size
        bad = ((input_ids < 0) & (input_ids != IMAGE_TOKEN_INDEX)) | (input_ids >= vocab)
        if bool(bad.any()):
            where = bad.nonzero()[0].tolist()
            raise ValueError(
                f"input_ids: id {int(input_ids[where[0], where[1]])} at (sample {where[0]}, position {where[1]}) is "
                f"outside the vocabulary [0, {vocab}) and is not the image placeholder {IMAGE_TOKEN_INDEX}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        elif not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"attention_mask: expected shape {(b, n)} as input_ids, got {got}")
        attention_mask = attention_mask.bool()
        empty = (~attention_mask.any(-1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"attention_mask: sample {empty[0]} has no True position (nothing to attend to)")
        if isinstance(images, torch.Tensor):
            self._check_images(images, b)
        elif images is not None and (isinstance(images, (str, bytes)) or not isinstance(images, Iterable)):
            raise ValueError(f"images: expected a tensor or an iterable of video chunks, got {type(images).__name__}")
        return attention_mask

    def _checked_chunks(self, chunks: Iterable[torch.Tensor], batch: int) -> Iterator[torch.Tensor]:
        if isinstance(chunks, (str, bytes)) or not isinstance(chunks, Iterable):
            raise ValueError(f"images: expected a tensor or an iterable of video chunks, got {type(chunks).__name__}")
        for i, chunk in enumerate(chunks):
            if not isinstance(chunk, torch.Tensor) or chunk.dim() != 6:
                got = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk).__name__
                raise ValueError(f"images: video chunk {i}: expected a tensor (B, t, parts, 3, H, W), got {got}")
            self._check_images(chunk, batch)
            yield chunk

    def _check_images(self, images: torch.Tensor, batch: int) -> None:
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images: expected a tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images: expected floating-point pixels, got {images.dtype}")
        v = self.config.vision
        parts = self.config.image_parts
        layouts = {4: "(B, 3, H, W)", 5: "(B, parts, 3, H, W)", 6: "(B, frames, parts, 3, H, W)"}
        if images.dim() not in layouts:
            raise ValueError(
                f"images: expected 4-, 5- or 6-D ({', '.join(layouts.values())}), got {tuple(images.shape)}"
            )
        if images.shape[0] != batch:
            raise ValueError(f"images: batch {images.shape[0]} does not match input_ids batch {batch}")
        got_parts = 1 if images.dim() == 4 else images.shape[-4]
        if got_parts != parts:
            raise ValueError(
                f"images: {got_parts} view(s) per image, but this model (resolution_ratio "
                f"{self.config.resolution_ratio}) takes {parts}; layout {layouts[images.dim()]}"
            )
        if images.dim() == 6 and images.shape[1] < 1:
            raise ValueError("images: a video needs at least one frame, got 0")
        if tuple(images.shape[-3:]) != (v.num_channels, v.image_size, v.image_size):
            raise ValueError(
                f"images: expected {v.num_channels} x {v.image_size} x {v.image_size} pixels per view, got "
                f"{tuple(images.shape[-3:])}"
            )
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images: NaN or inf pixels (every output would be poisoned); check the preprocessing")

    def prepare_inputs(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | Iterable[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        prefusion: str = "auto",
        encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> MultimodalInputs:
        """Splice the vision tokens into the text at the image placeholder (``IMAGE_TOKEN_INDEX``).

        Per sample: drop positions with ``attention_mask`` False, replace the placeholder by
        the vision tokens (a sample without placeholder gets none), right-pad the batch with
        zeros; position ids count 0.. over the real tokens. Matches the official
        ``prepare_inputs_labels_for_multimodal`` for inference with right padding. At most one
        placeholder per sample (one image or one video). With the config's
        ``tokenizer_model_max_length`` set, each spliced sample is cut to that many tokens (its
        end dropped), as the official code does. ``images`` and ``prefusion`` as in
        :meth:`encode_multimodal` (a video may be an iterable of chunks). ``encoded``: the
        (vision tokens (B, V, hidden), text features (B, L, hidden)) that
        :meth:`encode_multimodal` would return, computed elsewhere (e.g. by
        :func:`llava_mini.distributed.encode_video_distributed`); then ``images`` must be None.
        """
        attention_mask = self.check_inputs(input_ids, images, attention_mask)
        if encoded is not None:
            if images is not None:
                raise ValueError("encoded: pass either images or their encoding, not both")
            vision, text = encoded
            if text.shape[:2] != input_ids.shape or vision.shape[0] != input_ids.shape[0]:
                raise ValueError(
                    f"encoded: expected (vision (B, V, hidden), text {tuple(input_ids.shape)} + (hidden,)), got "
                    f"{tuple(vision.shape)} and {tuple(text.shape)}"
                )
        elif images is None:
            vision, text = None, self.embed(input_ids)
        else:
            vision, text = self.encode_multimodal(input_ids, images, prefusion=prefusion)
        limit = self.config.tokenizer_model_max_length
        seqs = []
        for i in range(input_ids.shape[0]):
            ids, feats = input_ids[i][attention_mask[i]], text[i][attention_mask[i]]
            where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            if len(where) > 1:
                raise ValueError("at most one image placeholder per sample is supported")
            if where and vision is None:
                raise ValueError("input_ids hold an image placeholder but no images were given")
            if where:
                p = where[0]
                feats = torch.cat([feats[:p], vision[i].to(feats.dtype), feats[p + 1 :]])
            seqs.append(feats if limit is None else feats[:limit])
        n = max(s.shape[0] for s in seqs)
        embeds = text.new_zeros(len(seqs), n, text.shape[-1])
        mask = torch.zeros(len(seqs), n, dtype=torch.bool, device=text.device)
        for i, s in enumerate(seqs):
            embeds[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = True
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0) * mask
        return MultimodalInputs(embeds, mask, position_ids)

    def decode(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        key_valid: torch.Tensor,
        caches: list[KVCache] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """LLaMA body + lm_head over new tokens at slots [start, start+L) -> logits (B, L, vocab)."""
        x = inputs_embeds
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)
        for i, layer in enumerate(self.model.layers):
            cache = None if caches is None else caches[i]
            attend = functools.partial(cached_attention, cache=cache, start=start, key_valid=key_valid)
            x = layer(x, cos, sin, attend)
        return self.lm_head(self.model.norm(x))

    def forward(
        self, input_ids: torch.Tensor, images: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Full multimodal forward without cache: logits (B, L', vocab) over the spliced sequence
        (right-padded; rows past each sample's length are meaningless)."""
        mm = self.prepare_inputs(input_ids, images, attention_mask)
        return self.decode(mm.inputs_embeds, mm.position_ids, mm.attention_mask)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | Iterable[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 16,
        eos_token_id: int | Sequence[int] | None = None,
        inputs: MultimodalInputs | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        streamer: Callable[[torch.Tensor], object] | None = None,
    ) -> torch.Tensor:
        """Decoding with a KV cache -> new token ids (B, max_new_tokens); :meth:`generate_stream`
        step by step.

        Greedy (argmax) by default. ``do_sample=True`` draws each token from
        ``softmax(logits / temperature)`` restricted to the top-p nucleus
        (:func:`sample_next_token`), with ``generator`` (on the model's device) for
        reproducible draws. ``eos_token_id``: one id or several (Llama 3.1 stops on any of
        ``<|eot_id|>``, ``<|eom_id|>``, ``<|end_of_text|>``); after one, a sample emits
        ``pad_token_id``; decoding stops early when every sample has ended (the remaining
        columns are ``pad_token_id``). ``streamer`` is called with each step's new tokens (B,)
        as they are produced. ``inputs`` may pass an already prepared :class:`MultimodalInputs`
        (to time the stages separately).
        """
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if streamer is not None and not callable(streamer):
            raise ValueError(f"streamer: expected a callable taking the (B,) new tokens, got {streamer!r}")
        steps = self.generate_stream(
            input_ids,
            images,
            attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            inputs=inputs,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
        )
        tokens = []
        for token in steps:
            tokens.append(token)
            if streamer is not None:
                streamer(token)
        b = (inputs.inputs_embeds if inputs is not None else input_ids).shape[0]  # checked by now
        out = torch.full((b, max_new_tokens), self.config.text.pad_token_id, dtype=torch.long, device=self.device)
        if tokens:
            out[:, : len(tokens)] = torch.stack(tokens, dim=1)
        return out

    @torch.no_grad()
    def generate_stream(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | Iterable[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 16,
        eos_token_id: int | Sequence[int] | None = None,
        inputs: MultimodalInputs | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """The tokens of :meth:`generate` as an iterator: one (B,) tensor per step, yielded as
        soon as it is decoded (a finished sample's entry is ``pad_token_id``); it ends after
        ``max_new_tokens`` steps or when every sample has emitted an end-of-sequence id. The
        arguments are checked, and the prompt prefilled, at the first ``next``.

        Prefill runs over the spliced sequence (pre-fusion runs only here; decode steps skip
        it, as officially). Samples of different lengths share cache slots: each new token
        goes to the next slot after the padded prompt, with the sample's own next position
        id, and padded slots are masked, so every sample decodes as if alone.
        """
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        eos = _eos_ids(eos_token_id, self.config.text.vocab_size)
        if not isinstance(do_sample, bool):
            raise ValueError(f"do_sample: expected True or False, got {do_sample!r}")
        if do_sample:
            _check_sampling(temperature, top_p, generator)
        mm = inputs if inputs is not None else self.prepare_inputs(input_ids, images, attention_mask)
        b, n, _ = mm.inputs_embeds.shape
        t = self.config.text
        if max_new_tokens == 0:
            return
        longest = int(mm.attention_mask.sum(-1).max())
        if longest + max_new_tokens > t.max_position_embeddings:
            raise ValueError(
                f"max_new_tokens: the longest prompt ({longest} tokens with the vision tokens) plus "
                f"{max_new_tokens} new tokens exceeds max_position_embeddings = {t.max_position_embeddings}"
            )
        total = n + max_new_tokens
        caches = [
            KVCache(b, t.num_kv_heads, total, t.head_dim, dtype=self.dtype, device=self.device)
            for _ in self.model.layers
        ]
        key_valid = torch.zeros(b, total, dtype=torch.bool, device=self.device)
        key_valid[:, :n] = mm.attention_mask
        lengths = mm.attention_mask.sum(-1)
        logits = self.decode(mm.inputs_embeds, mm.position_ids, key_valid, caches, 0)
        last = logits[torch.arange(b, device=logits.device), lengths - 1]
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        pad = torch.full((b,), t.pad_token_id, dtype=torch.long, device=self.device)
        for step in range(max_new_tokens):
            if do_sample:
                token = sample_next_token(last, temperature=temperature, top_p=top_p, generator=generator)
            else:
                token = last.argmax(-1)
            yield torch.where(done, pad, token)
            if eos is not None:
                done |= torch.isin(token, eos.to(token.device))
                if bool(done.all()):
                    return
            if step + 1 == max_new_tokens:
                return
            key_valid[:, n + step] = True
            pos = (lengths + step)[:, None]
            last = self.decode(self.model.embed_tokens(token[:, None]), pos, key_valid, caches, n + step)[:, -1]

    @staticmethod
    def llm_vision_tokens(config: LlavaMiniConfig, frames: int = 1) -> int:
        """Vision tokens reaching the LLM for one image or a video of ``frames`` frames."""
        return frames * config.llm_tokens_per_image


def _eos_ids(eos_token_id: int | Sequence[int] | None, vocab: int) -> torch.Tensor | None:
    """``eos_token_id`` (None, an id or a non-empty sequence of ids in [0, vocab)) as a 1-D tensor."""
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) and not isinstance(eos_token_id, bool) else eos_token_id
    ok = isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)) and len(ids) > 0
    ok = ok and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids)
    if not ok:
        raise ValueError(
            f"eos_token_id: expected an id or a non-empty list of ids in [0, {vocab}), got {eos_token_id!r}"
        )
    return torch.tensor(list(ids), dtype=torch.long)


def _check_sampling(temperature: float, top_p: float, generator: torch.Generator | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0 when sampling (use do_sample=False for greedy), got {temperature}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")


def sample_next_token(
    logits: torch.Tensor, *, temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token per row of ``logits`` (B, vocab) -> (B,) int64, drawn from
    ``p = softmax(logits / temperature)`` (in float32) restricted to the top-p nucleus: the
    most probable tokens, in decreasing order, up to and including the first whose cumulative
    probability reaches ``top_p`` (the most probable token is always kept), renormalised.
    ``generator`` must be on ``logits``' device."""
    _check_sampling(temperature, top_p, generator)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the more probable tokens
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def num_parameters(module: nn.Module) -> int:
    """Parameter count (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
