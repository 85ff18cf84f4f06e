"""Region-word loss: image tokens under a target mask predict the words that name the target.

The text loss alone trains the LLM to read the image only through the few answer tokens that
depend on it (is the named object there at all, which shape is left of another). This auxiliary
loss gives every image token covered by a ground-truth mask a direct target: through the LM head
(the "logit lens"), the token's hidden state at layer `layer` should predict the answer tokens
that name that mask (the text from the previous codebook group, or the answer start, up to the
mask's own group). It needs no annotation beyond the (phrase, mask) pairs the answers already
carry, and it puts the words for an object's colour and shape on the image tokens where it sits.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .constants import IGNORE_INDEX
from .data.batch import Batch, ImageMeta

FILLER_WORDS = frozenset({"", "the", "a", "an", "and", "of", ",", "."})
"""Tokens that name nothing: they join the phrases of a multi-target answer."""


@functools.lru_cache(maxsize=8)  # one pass over the vocabulary per tokenizer
def filler_token_ids(tokenizer) -> torch.Tensor:
    """Ids of the vocabulary's tokens that decode to a FILLER_WORDS entry (case and spaces aside)."""
    vocab = tokenizer.get_vocab()
    ids = [i for i in vocab.values() if tokenizer.decode([i]).strip().lower() in FILLER_WORDS]
    return torch.tensor(sorted(ids), dtype=torch.long)


def phrase_token_ids(labels: torch.Tensor, groups: torch.Tensor, ignore: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The answer tokens that name each codebook group of one row.

    labels: (S,) with IGNORE_INDEX outside the answer; groups: (G, K) group positions.
    Returns G unique-id tensors: the answer tokens after the previous group (or from the answer
    start) up to this group's first codebook token, less the `ignore` ids (filler words).
    """
    answer = (labels != IGNORE_INDEX).nonzero().flatten()
    start = int(answer[0]) if answer.numel() else 0
    out = []
    for g in groups:
        ids = labels[start:int(g[0])]
        ids = ids[ids != IGNORE_INDEX]
        if ignore is not None:
            ids = ids[~torch.isin(ids, ignore.to(ids.device))]
        out.append(torch.unique(ids))
        start = int(g[-1]) + 1
    return out


def mask_cover(masks: torch.Tensor, meta: ImageMeta, input_size: int, grid: int) -> torch.Tensor:
    """(n, H, W) masks at original size -> (n, grid*grid) share of each image token's cell covered.

    The image sits at the top left of the padded (input_size, input_size) frame, resized to
    meta.valid_size, as the processor puts it.
    """
    x = F.interpolate(masks.float().unsqueeze(1), size=meta.valid_size, mode="area")
    x = F.pad(x, (0, input_size - meta.valid_size[1], 0, input_size - meta.valid_size[0]))
    return F.adaptive_avg_pool2d(x, grid).flatten(1)


def region_word_loss(
    hidden: torch.Tensor, batch: Batch, groups: list[torch.Tensor], image_token_id: int,
    lm_head: nn.Module, norm: nn.Module, min_cover: float = 0.3, ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-target cross-entropy of the LM head on image tokens covered by a target mask.

    hidden: (B, S, H) one LLM layer's states, which `norm` brings to the LM head's input (the
    final norm, or identity for the already-normed last layer). groups: per row (G, K).
    A token takes the words of the mask covering the largest share of its cell, if that share is
    at least `min_cover`; the target spreads evenly over those words. When no token of the batch
    is covered (text-only or absent-only batches) the loss is zero, but `norm` and the LM head
    still run (on one state): the graph, and what DeepSpeed gathers and reduces, stay the same
    whatever the batch holds.
    """
    feats, owners, words = [], [], []
    input_size = batch.pixel_values.shape[-1]
    for b, (ids, labels) in enumerate(zip(batch.input_ids, batch.labels)):
        masks = batch.masks[b]
        if masks.shape[0] == 0:
            continue
        positions = (ids == image_token_id).nonzero().flatten()
        grid = int(round(positions.numel() ** 0.5))
        cover = mask_cover(masks, batch.image_meta[int(batch.image_index[b])], input_size, grid)  # (n, T)
        share, owner = cover.max(0)
        keep = share >= min_cover
        if keep.any():
            feats.append(hidden[b, positions[keep]])
            owners.append(owner[keep] + len(words))
            words.extend(phrase_token_ids(labels, groups[b], ignore))
    if not feats:
        return lm_head(norm(hidden[0, :1])).float().sum() * 0.0
    logits = lm_head(norm(torch.cat(feats))).float()  # (N, V)
    target = torch.zeros(len(words), logits.shape[-1], device=logits.device)
    for j, w in enumerate(words):
        if w.numel():
            target[j, w] = 1.0 / w.numel()
    return -(target[torch.cat(owners)] * logits.log_softmax(-1)).sum(-1).mean()
