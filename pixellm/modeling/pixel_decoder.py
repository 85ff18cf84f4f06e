"""Light pixel decoder: per-scale two-way attention, coarse-to-fine, learned scale weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, Mlp, build_sincos2d_pos_embed, trunc_normal_
from torch import nn

from .two_way import TwoWayTransformer


def _neck(vision_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(vision_dim, dim, 1, bias=False), LayerNorm2d(dim),
        nn.Conv2d(dim, dim, 3, padding=1, bias=False), LayerNorm2d(dim),
    )


def _upsample2x(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), LayerNorm2d(cout), nn.GELU())


class PixelDecoder(nn.Module):
    """Turns one fused codebook embedding per scale into one mask per target.

    Scale l works at (2**l) x the CLIP grid. Its features are modulated by the previous (coarser)
    scale's mask as features * (sigmoid(mask) + 1), and the per-scale masks are combined with
    learned (softmax) weights. Output logits are at 1/4 of the input resolution.
    """

    def __init__(
        self, *, vision_dim: int, num_scales: int, dim: int = 256, depth: int = 2, heads: int = 8,
        mlp_dim: int = 2048, conv_stem: bool = False, stem_dim: int = 32, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_scales = num_scales
        self.dim = dim
        self.necks = nn.ModuleList(_neck(vision_dim, dim) for _ in range(num_scales))
        # scale l is upsampled l times (2x each): coarse-to-fine
        self.upsamplers = nn.ModuleList(
            nn.Sequential(*[_upsample2x(dim, dim) for _ in range(level)]) for level in range(num_scales)
        )
        self.transformers = nn.ModuleList(
            TwoWayTransformer(dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, drop_path=drop_path)
            for _ in range(num_scales)
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.level_embed = nn.Parameter(torch.zeros(num_scales, dim))
        self.output_upscale = _upsample2x(dim, dim // 8)
        self.hypernet = Mlp(dim, dim, dim // 8)
        self.scale_logits = nn.Parameter(torch.zeros(num_scales))
        self.stem = None
        if conv_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(3, stem_dim, 3, stride=2, padding=1), LayerNorm2d(stem_dim), nn.GELU(),
                nn.Conv2d(stem_dim, dim // 8, 3, stride=2, padding=1),
            )
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.level_embed, std=0.02)

    def _pos_embed(self, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
        pe = build_sincos2d_pos_embed([h, w], dim=self.dim, device=ref.device, dtype=torch.float32)
        return pe.to(ref.dtype).unsqueeze(0)  # (1, h*w, D)

    def forward(
        self,
        seg_embeds: torch.Tensor,
        features: list[torch.Tensor],
        target_image: torch.Tensor,
        out_size: tuple[int, int],
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode masks.

        seg_embeds: (T, L, D) fused codebook embedding per target and scale.
        features: L maps (I, C_vis, g, g), coarsest scale first.
        target_image: (T,) index of each target's image in `features`.
        out_size: (h, w) output logits size, 1/4 of the padded input.
        images: (I, 3, R, R) normalised input, needed only with the conv stem.
        Returns (T, h, w) mask logits.
        """
        num_targets = seg_embeds.shape[0]
        if num_targets == 0:
            return seg_embeds.new_zeros(0, *out_size)
        stem = self.stem(images)[target_image] if self.stem is not None else None
        weights = self.scale_logits.softmax(0)
        prev, combined = None, 0.0
        for level in range(self.num_scales):
            src = self.upsamplers[level](self.necks[level](features[level]))[target_image]  # (T, D, h_l, w_l)
            h, w = src.shape[-2:]
            if prev is not None:
                prev_l = F.interpolate(prev.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False)
                src = src * (prev_l.sigmoid() + 1)
            tokens = torch.cat([self.mask_token.expand(num_targets, -1, -1), seg_embeds[:, level : level + 1]], 1)
            tokens = tokens + self.level_embed[level]
            tokens, image = self.transformers[level](tokens, src.flatten(2).transpose(1, 2), self._pos_embed(h, w, src))
            image = image.transpose(1, 2).reshape(num_targets, self.dim, h, w)
            up = F.interpolate(self.output_upscale(image), size=out_size, mode="bilinear", align_corners=False)
            if stem is not None and level == self.num_scales - 1:
                up = up + F.interpolate(stem, size=out_size, mode="bilinear", align_corners=False)
            mask = torch.einsum("tc,tchw->thw", self.hypernet(tokens[:, 0]), up)
            combined = combined + weights[level] * mask
            prev = mask
        return combined


def postprocess_masks(
    logits: torch.Tensor, input_size: int, valid_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """(n, h, w) low-res logits of the padded square input -> (n, H, W) logits at original size.

    Upsample to the padded input (R x R), crop the bottom/right padding to the resized image
    (valid_size), then resize to the original image size.
    """
    if logits.shape[0] == 0:
        return logits.new_zeros(0, *original_size)
    x = F.interpolate(logits.unsqueeze(1), size=(input_size, input_size), mode="bilinear", align_corners=False)
    x = x[..., : valid_size[0], : valid_size[1]]
    return F.interpolate(x, size=tuple(original_size), mode="bilinear", align_corners=False).squeeze(1)
