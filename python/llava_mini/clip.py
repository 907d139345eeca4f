"""CLIP ViT vision tower in plain PyTorch, with Hugging Face ``CLIPVisionModel`` parameter names.

The official ``CLIPVisionTower`` wraps a ``CLIPVisionModel`` as ``self.vision_tower``, so the
checkpoint keys read ``model.vision_tower.vision_tower.vision_model.<...>``. Features are
``hidden_states[select_layer]`` (-2: the output of the second-to-last encoder layer) with the
CLS token dropped (``mm_vision_select_feature='patch'``); the last encoder layer and
``post_layernorm`` exist (they are in the checkpoint) but are never run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig

__all__ = ["CLIPVisionTower", "CLIPVisionModel"]


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)

        o = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(o.transpose(1, 2).reshape(b, n, d))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_layers))


class CLIPVisionEmbeddings(nn.Module):
    """Patch embedding (conv, no bias) + CLS token + learned absolute positions."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(cfg.num_patches + 1, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))  # (B, D, g, g)
        patches = patches.flatten(2).transpose(1, 2)  # (B, g*g, D), row-major over the grid
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class CLIPVisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # (sic) HF spelling
        self.encoder = CLIPEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class CLIPVisionModel(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionTransformer(cfg)


class CLIPVisionTower(nn.Module):
    """The official ``CLIPVisionTower``: pixels (B, 3, H, W) -> patch features (B, N, D)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vision_tower = CLIPVisionModel(cfg)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Second-to-last layer's tokens (``select_layer``) in the tower's dtype: the patches
        (``select_feature="patch"``, CLS dropped) or CLS then the patches (``"cls_patch"``)."""
        vm = self.vision_tower.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixels))  # hidden_states[0]
        for layer in vm.encoder.layers[: self.config.num_layers_used]:
            x = layer(x)
        return x if self.config.select_feature == "cls_patch" else x[:, 1:]
