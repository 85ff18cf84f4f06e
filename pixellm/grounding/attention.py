"""Attention from answer tokens to the image tokens, as maps over the image-token grid.

The rules, and where they come from:

* **Which row.** The map of answer token i is the attention of the query that *predicts* it
  (sequence position i - 1): what `generate(output_attentions=True)` returns at the step that
  emits the token, the quantity attend-and-segment reads (Cao et al., arXiv 2410.08209, Sec. 3).
* **Heads** are averaged (or a chosen subset), per layer.
* **Normalisation** (attend-and-segment, Sec. 3, "attention normalization"): some image tokens
  draw attention from every query whatever is asked (attention sinks, a positional bias toward
  the last rows); subtracting the mean map of all the answer's tokens, per layer, leaves what
  is specific to this token. Without it a map sums to the token's attention mass on the image.
* **Aggregation**: the mean over a chosen set of layers, then over a phrase's tokens.
* **Point**: the peak cell's centre, carried to image pixels through the processor's geometry
  (longest side resized to R, padding bottom/right). A peak in the padding lies outside the image.
* **Mask**: the map upsampled (bilinear) to the image, min-max scaled over the image, >= 0.5.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.batch import ImageMeta

MASK_THRESHOLD = 0.5  # of the min-max scaled map: the "attention mask" rule


@contextmanager
def eager_attention(language_model: torch.nn.Module) -> Iterator[None]:
    """Run the LLM with eager attention inside the block (SDPA and flash-attention do not return
    attention weights), then restore its implementation. Eager computes the same softmax."""
    old = language_model.config._attn_implementation
    language_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        language_model.set_attn_implementation(old)


@dataclass
class AnswerAttention:
    """Attention of one teacher-forced answer.

    maps: (L, T, N) float: per LLM layer, per answer token, attention over the N image tokens
    (heads averaged or selected; not normalised). answer_ids: (T,) the answer tokens.
    logits: (T, V) the LM's predictions of those tokens (to compare attention implementations).
    """

    maps: torch.Tensor
    answer_ids: torch.Tensor
    logits: torch.Tensor


@torch.no_grad()
def answer_attention(model, pixel_values: torch.Tensor, prompt_ids: Sequence[int], answer_ids: Sequence[int],
                     heads: Sequence[int] | None = None, vision=None) -> AnswerAttention:
    """One forward over prompt + answer with attention weights returned.

    pixel_values: (1, 3, R, R); vision: its `encode_images` output when the caller has it (an
    image probed several times is encoded once). Rows: the predicting query of each answer token.
    """
    device = pixel_values.device
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], dtype=torch.long, device=device)
    image_pos = (ids[0] == model.config.image_token_id).nonzero().flatten()
    vision = vision if vision is not None else model.encode_images(pixel_values)
    embeds = model.embed_inputs(ids, vision.llm_tokens, torch.zeros(1, dtype=torch.long, device=device))
    with eager_attention(model.language_model):
        out = model.language_model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), output_attentions=True)
    start = len(prompt_ids)
    rows = torch.arange(start - 1, ids.shape[1] - 1, device=device)  # predicting queries
    per_layer = []
    for att in out.attentions:  # (1, H, S, S)
        a = att[0] if heads is None else att[0, list(heads)]
        per_layer.append(a[:, rows][:, :, image_pos].float().mean(0))  # (T, N)
    logits = model.lm_head(out.last_hidden_state[0, rows]).float()
    return AnswerAttention(torch.stack(per_layer), ids[0, start:].cpu(), logits.cpu())


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """(L, T, N) -> the same minus each layer's mean map over the T answer tokens."""
    return maps - maps.mean(dim=1, keepdim=True)


def aggregate(maps: torch.Tensor, layers: Sequence[int] | None = None, tokens: Sequence[int] | None = None) -> torch.Tensor:
    """(L, T, N) -> (N,): mean over `layers` (all if None), then over `tokens` (all if None)."""
    x = maps if layers is None else maps[list(layers)]
    x = x.mean(0)
    return (x if tokens is None else x[list(tokens)]).mean(0)


def grid_of(flat: torch.Tensor) -> torch.Tensor:
    """(N,) -> (g, g) with g = sqrt(N): the image tokens' row-major grid."""
    g = int(round(flat.numel() ** 0.5))
    if g * g != flat.numel():
        raise ValueError(f"{flat.numel()} image tokens do not form a square grid")
    return flat.reshape(g, g)


def peak_point(grid: torch.Tensor, meta: ImageMeta, input_size: int) -> tuple[float, float] | None:
    """Peak cell of a (g, g) map -> its centre (x, y) in original image pixels; None when the
    peak lies in the padding (outside the image)."""
    g = grid.shape[0]
    r, c = divmod(int(torch.argmax(grid)), g)
    cell = input_size / g
    y, x = (r + 0.5) * cell, (c + 0.5) * cell  # in the padded (R, R) frame
    vh, vw = meta.valid_size
    if y >= vh or x >= vw:
        return None
    h, w = meta.original_size
    return x * w / vw, y * h / vh


def point_in_mask(point: tuple[float, float] | None, mask: torch.Tensor) -> bool:
    """Whether a pixel point (x, y) falls on a true pixel of the (H, W) mask (PointAcc's hit)."""
    if point is None:
        return False
    h, w = mask.shape
    x, y = min(int(point[0]), w - 1), min(int(point[1]), h - 1)
    return bool(mask[y, x])


def map_to_image(grid: torch.Tensor, meta: ImageMeta, input_size: int) -> torch.Tensor:
    """(g, g) map -> (H, W) float at the original image size (bilinear; padding cropped)."""
    x = F.interpolate(grid[None, None].float(), size=(input_size, input_size), mode="bilinear", align_corners=False)
    vh, vw = meta.valid_size
    x = x[..., :vh, :vw]
    return F.interpolate(x, size=meta.original_size, mode="bilinear", align_corners=False)[0, 0]


def attention_mask(image_map: torch.Tensor, threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """(H, W) map -> bool mask: min-max scaled over the image, >= threshold (all False if flat)."""
    lo, hi = image_map.min(), image_map.max()
    if float(hi - lo) <= 0:
        return torch.zeros_like(image_map, dtype=torch.bool)
    return (image_map - lo) / (hi - lo) >= threshold
