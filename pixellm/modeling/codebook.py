"""Segmentation codebook: finding groups by token id, and the learned fusion of their states."""

from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import nn


class CodebookGroupError(ValueError):
    """Codebook tokens in a sequence that do not form whole, ordered groups."""


def find_codebook_groups(input_ids: torch.Tensor, seg_token_ids: list[int] | torch.Tensor) -> torch.Tensor:
    """Positions of the codebook groups in one token sequence, found by id (never by offset).

    input_ids: (S,) one row. seg_token_ids: (K,) the codebook ids in order [SEG0]..[SEG{K-1}].
    Returns (G, K) long positions: group g's k-th token sits at [g, k].
    Raises CodebookGroupError if the tokens do not form contiguous groups in codebook order.
    """
    seg = torch.as_tensor(seg_token_ids, device=input_ids.device)
    k = seg.numel()
    pos = torch.isin(input_ids, seg).nonzero().squeeze(1)
    if pos.numel() % k:
        raise CodebookGroupError(f"{pos.numel()} codebook tokens is not a multiple of the group size {k}")
    groups = pos.view(-1, k)
    if groups.numel() == 0:
        return groups
    ordered = (input_ids[groups] == seg).all()
    contiguous = (groups[:, 1:] - groups[:, :-1] == 1).all()
    if not (ordered and contiguous):
        raise CodebookGroupError(
            f"codebook tokens at positions {pos.tolist()} are not contiguous groups in order {seg.tolist()}"
        )
    return groups


class MeanFusion(nn.Linear):
    """N concatenated D-wide states -> one D-wide state ((N*D) -> D), starting as their mean.

    The start lives in `reset_parameters`, which runs inside the layer's own constructor: under
    DeepSpeed's zero.Init the weight is partitioned as soon as the layer is built, so an
    assignment made later by the parent module would write into an empty shard.
    """

    def reset_parameters(self) -> None:
        # draw nn.Linear's default init first, then overwrite it: the random stream, and so the
        # initial weights of every module built after this one, stay those of earlier releases
        super().reset_parameters()
        n = self.in_features // self.out_features
        with torch.no_grad():
            self.weight.copy_(torch.eye(self.out_features).repeat(1, n) / n)
            self.bias.zero_()


class CodebookFusion(nn.Module):
    """Hidden states of a group's L*N codebook tokens -> one embedding per scale.

    A shared MLP projects each state (H -> D); a learned linear map per scale fuses the N
    projected states of that scale into one (the paper's phi). It starts as their mean.
    """

    def __init__(self, *, hidden_size: int, dim: int, num_scales: int, tokens_per_scale: int) -> None:
        super().__init__()
        self.num_scales, self.tokens_per_scale, self.dim = num_scales, tokens_per_scale, dim
        self.proj = Mlp(hidden_size, hidden_size, dim, act_layer=nn.ReLU)
        self.fuse = nn.ModuleList(MeanFusion(tokens_per_scale * dim, dim) for _ in range(num_scales))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (T, L*N, H) states in codebook order -> (T, L, D)."""
        t = hidden.shape[0]
        x = self.proj(hidden).view(t, self.num_scales, self.tokens_per_scale * self.dim)
        return torch.stack([fuse(x[:, level]) for level, fuse in enumerate(self.fuse)], dim=1)
