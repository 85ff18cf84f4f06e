"""One CLIP pass -> the LLM's image tokens and the pixel decoder's multi-scale features."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VisionFeatures:
    """Outputs of `encode_images` for I images.

    llm_tokens: (I, T, H) projected (and optionally pooled) image tokens for the LLM.
    scales: per decoder scale (coarsest first) a (I, C_vis, g, g) patch-feature map.
    """

    llm_tokens: torch.Tensor
    scales: list[torch.Tensor]


def patch_grid(hidden: torch.Tensor) -> torch.Tensor:
    """(I, 1 + g*g, C) CLIP hidden state -> (I, C, g, g) patch map (CLS dropped)."""
    patches = hidden[:, 1:]
    g = math.isqrt(patches.shape[1])
    if g * g != patches.shape[1]:
        raise ValueError(f"CLIP produced {patches.shape[1]} patch tokens, which is not a square grid")
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], g, g)


def pool_tokens(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """Average-pool a (I, g*g, H) token grid to (I, side*side, H); cuts the LLM prefill."""
    i, n, h = tokens.shape
    g = math.isqrt(n)
    grid = tokens.transpose(1, 2).reshape(i, h, g, g)
    return F.adaptive_avg_pool2d(grid, side).flatten(2).transpose(1, 2)


def encode_images(
    vision_tower: nn.Module,
    projector: nn.Module,
    pixel_values: torch.Tensor,
    *,
    llm_layer: int,
    decoder_layers: list[int],
    pool: int | None,
    native_size: int,
) -> VisionFeatures:
    """Run CLIP once and route its hidden states.

    pixel_values: (I, 3, R, R). Inputs of another size than the tower's `native_size` use
    transformers' own position-embedding interpolation.
    """
    out = vision_tower(
        pixel_values,
        output_hidden_states=True,
        interpolate_pos_encoding=pixel_values.shape[-1] != native_size,
    )
    hs = out.hidden_states
    llm = projector(hs[llm_layer][:, 1:])  # LLaVA-1.5 "default" strategy drops CLS
    if pool is not None:
        llm = pool_tokens(llm, pool)
    return VisionFeatures(llm_tokens=llm, scales=[patch_grid(hs[i]) for i in decoder_layers])
