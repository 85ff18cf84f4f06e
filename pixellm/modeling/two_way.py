"""Two-way attention between a few prompt tokens and an image feature map (SAM-style block)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with separate query/key/value inputs and an optional narrower
    inner width (`downsample`), which keeps token<->image attention cheap."""

    def __init__(self, dim: int, heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        if inner % heads:
            raise ValueError(f"attention width {inner} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (B, Nq, D), k and v: (B, Nk, D) -> (B, Nq, D)."""
        out = F.scaled_dot_product_attention(self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v)))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TwoWayBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, drop_path: float = 0.0, first: bool = False) -> None:
        super().__init__()
        self.first = first  # the first block has no residual on self-attention (tokens start from prompts)
        self.self_attn = Attention(dim, heads)
        self.cross_t2i = Attention(dim, heads, downsample=2)
        self.cross_i2t = Attention(dim, heads, downsample=2)
        self.mlp = Mlp(dim, mlp_dim, act_layer=nn.ReLU)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, tokens: torch.Tensor, image: torch.Tensor, token_pe: torch.Tensor, image_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, T, D), image: (B, HW, D), token_pe: (B, T, D), image_pe: (1 or B, HW, D)."""
        q = tokens + token_pe
        attn = self.self_attn(q, q, tokens)
        tokens = self.norms[0](attn if self.first else tokens + self.drop_path(attn))
        key = image + image_pe
        tokens = self.norms[1](tokens + self.drop_path(self.cross_t2i(tokens + token_pe, key, image)))
        tokens = self.norms[2](tokens + self.drop_path(self.mlp(tokens)))
        image = self.norms[3](image + self.drop_path(self.cross_i2t(key, tokens + token_pe, tokens)))
        return tokens, image


class TwoWayTransformer(nn.Module):
    """`depth` two-way blocks and a final token->image attention."""

    def __init__(self, *, dim: int, depth: int, heads: int, mlp_dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TwoWayBlock(dim=dim, heads=heads, mlp_dim=mlp_dim, drop_path=drop_path, first=i == 0) for i in range(depth)
        )
        self.final_attn = Attention(dim, heads, downsample=2)
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor, image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, T, D); image: (B, HW, D); image_pe: (1, HW, D). Returns updated (tokens, image)."""
        token_pe = tokens
        for block in self.blocks:
            tokens, image = block(tokens, image, token_pe, image_pe)
        tokens = self.final_norm(tokens + self.final_attn(tokens + token_pe, image + image_pe, image))
        return tokens, image
