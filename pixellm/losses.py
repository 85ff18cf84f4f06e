"""Training losses: text cross-entropy, mask BCE with target refinement weighting, Dice."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossWeights
from .constants import IGNORE_INDEX
from .region_words import filler_token_ids, region_word_loss


@dataclass
class LossOutput:
    """total = ce_w * ce + bce_w * bce + dice_w * dice (+ region_w * region) (all scalars);
    num_masks over the batch; region is None when the region-word loss is off."""

    total: torch.Tensor
    ce: torch.Tensor
    bce: torch.Tensor
    dice: torch.Tensor
    num_masks: int
    region: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        names = ("total", "ce", "bce", "dice") + (("region",) if self.region is not None else ())
        return {k: float(getattr(self, k).detach()) for k in names}


def text_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    """Next-token cross-entropy on labelled positions only.

    hidden: (B, S, H); labels: (B, S) with IGNORE_INDEX on prompt/image/padding. The LM head runs
    only on the positions that are scored, which saves the (B, S, vocab) logits tensor. With no
    scored position it still runs, on one state with zero weight: its trainable rows then get a
    (zero) gradient on every rank, as DeepSpeed's reduction needs.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    if not keep.any():
        return lm_head(hidden[:1, 0]).float().sum() * 0.0
    logits = lm_head(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, targets[keep])


def refinement_weights(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """PixelLM's target refinement weight map for the masks of one question.

    logits: (n, H, W) predicted mask logits of one question. Returns (H, W), detached: alpha where
    two or more of the question's predicted masks are positive, else 1.
    """
    with torch.no_grad():
        overlap = (logits > 0).sum(0) >= 2
        return torch.where(overlap, torch.full_like(logits[0], alpha), torch.ones_like(logits[0]))


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(n, H, W) logits and {0,1} targets, (H, W) weights -> (n,) mean weighted BCE per mask."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * weight).flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(n, H, W) -> (n,) soft Dice loss 1 - (2|P.T| + eps) / (|P| + |T| + eps)."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def mask_losses(
    logits_per_question: list[torch.Tensor], targets_per_question: list[torch.Tensor], alpha: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean BCE (refinement-weighted) and Dice over every mask of every question.

    Both lists hold, per question, (n_q, H_q, W_q) tensors at the same size; targets are binarised
    (> 0) so that summed polygon parts cannot exceed 1. Returns (bce, dice, number of masks).
    """
    bce, dice = [], []
    for logits, target in zip(logits_per_question, targets_per_question):
        if logits.shape[0] == 0:
            continue
        if logits.shape != target.shape:
            raise ValueError(f"mask logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ")
        logits = logits.float()
        target = (target > 0).float()
        bce.append(weighted_bce(logits, target, refinement_weights(logits, alpha)))
        dice.append(dice_loss(logits, target))
    if not bce:
        zero = torch.zeros((), device=logits_per_question[0].device if logits_per_question else None)
        return zero, zero, 0
    bce_all, dice_all = torch.cat(bce), torch.cat(dice)
    return bce_all.mean(), dice_all.mean(), bce_all.numel()


def compute_losses(model, output, batch, weights: LossWeights) -> LossOutput:
    """All training losses for one batch. Masks are scored at each image's original size."""
    labels = batch.labels if batch.labels is not None else torch.full_like(batch.input_ids, IGNORE_INDEX)
    ce = text_loss(output.hidden_states, labels, model.lm_head)
    logits = [
        model.postprocess_masks(lg, batch.image_meta[int(i)]) for lg, i in zip(output.mask_logits, batch.image_index)
    ]
    bce, dice, n = mask_losses(logits, batch.masks or [], weights.refine_alpha)
    # the anchor (zero) keeps the codebook fusion and the decoder in the graph of every batch,
    # targets or not, so every trainable parameter gets a gradient on every rank
    total = weights.ce * ce + weights.bce * bce + weights.dice * dice + output.anchor
    region = None
    if weights.region_words > 0 and batch.labels is not None:
        region = region_loss(model, output, batch, weights.region_words_layer)
        total = total + weights.region_words * region
    return LossOutput(total=total, ce=ce.detach(), bce=bce.detach(), dice=dice.detach(), num_masks=n,
                      region=None if region is None else region.detach())


def region_loss(model, output, batch, layer: int) -> torch.Tensor:
    """The region-word loss on `layer`'s image-token states."""
    if output.layer_states is None:
        raise ValueError("the region-word loss needs the model run with output_layer_states=True")
    last = len(output.layer_states) - 1
    if not -(last + 1) <= layer <= last:
        raise ValueError(f"train.loss.region_words_layer={layer} but the LLM has {last} layers "
                         f"(0 = embeddings, {last} or -1 = last)")
    layer = layer % (last + 1)
    # transformers returns the last entry after the final norm; the others need it (logit lens)
    hidden, norm = ((output.hidden_states, nn.Identity()) if layer == last
                    else (output.layer_states[layer], model.language_model.norm))
    return region_word_loss(hidden, batch, output.codebook_groups, model.config.image_token_id, model.lm_head,
                            norm, ignore=filler_token_ids(model.tokenizer))
