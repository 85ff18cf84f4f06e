"""`Sample` and `Batch`: the only contract between data and model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..constants import IGNORE_INDEX


@dataclass(frozen=True)
class ImageMeta:
    """Where an image sits in the padded square input.

    original_size: (H, W) of the image on disk (masks and metrics live here).
    valid_size: (h, w) of the resized image inside the (R, R) input; the rest is bottom/right padding.
    """

    original_size: tuple[int, int]
    valid_size: tuple[int, int]


@dataclass
class Sample:
    """One question about one image, tokenized.

    input_ids: (S,) long, with the image block expanded and codebook groups in the answer.
    labels: (S,) long, IGNORE_INDEX everywhere but the answer tokens.
    pixel_values: (3, R, R) float, normalised and padded.
    masks: (n, H, W) bool at original size, one per codebook group, in text order.
    image_key: rows with the same key share one encoded image inside a batch.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    masks: torch.Tensor
    image_meta: ImageMeta
    image_key: str
    source: str = ""
    image_id: int | str = ""
    question_id: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SampleMeta:
    """What a batch keeps of each row's sample besides its tensors (bookkeeping only)."""

    source: str
    image_id: int | str
    question_id: str
    extra: dict


@dataclass
class Batch:
    """A padded batch of B rows over I distinct images.

    input_ids: (B, S) long, right-padded with pad_id.
    attention_mask: (B, S) long.
    labels: (B, S) long or None.
    pixel_values: (I, 3, R, R) float.
    image_index: (B,) long, row -> image.
    masks: per row a (n_b, H_i, W_i) bool tensor, or None at inference.
    image_meta: per image its ImageMeta.
    rows: per row its SampleMeta (source, ids, skip/truncation counts).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    image_index: torch.Tensor
    image_meta: list[ImageMeta]
    labels: torch.Tensor | None = None
    masks: list[torch.Tensor] | None = None
    rows: list[SampleMeta] | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """Move tensors to `device`; `dtype` applies to pixel_values only."""
        def mv(t):
            return None if t is None else t.to(device)
        return Batch(
            input_ids=mv(self.input_ids), attention_mask=mv(self.attention_mask),
            pixel_values=self.pixel_values.to(device, dtype=dtype or self.pixel_values.dtype),
            image_index=mv(self.image_index), image_meta=self.image_meta, labels=mv(self.labels),
            masks=None if self.masks is None else [m.to(device) for m in self.masks], rows=self.rows,
        )

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]


def collate(samples: list[Sample], pad_id: int) -> Batch:
    """Right-pad rows and encode each distinct image once (rows sharing `image_key`)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    length = max(s.input_ids.numel() for s in samples)
    b = len(samples)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((b, length), dtype=torch.long)
    keys: dict[str, int] = {}
    pixels, metas, image_index = [], [], []
    for i, s in enumerate(samples):
        n = s.input_ids.numel()
        input_ids[i, :n], labels[i, :n], attention[i, :n] = s.input_ids, s.labels, 1
        if s.image_key not in keys:
            keys[s.image_key] = len(pixels)
            pixels.append(s.pixel_values)
            metas.append(s.image_meta)
        image_index.append(keys[s.image_key])
    return Batch(
        input_ids=input_ids, attention_mask=attention, labels=labels,
        pixel_values=torch.stack(pixels), image_index=torch.tensor(image_index, dtype=torch.long),
        image_meta=metas, masks=_pack_masks([s.masks for s in samples]),
        rows=[SampleMeta(s.source, s.image_id, s.question_id, s.extra) for s in samples],
    )


def _pack_masks(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-row masks as views of one buffer: a DataLoader worker then hands the main process one
    shared-memory block per batch instead of one per row (the hand-over dominated loading)."""
    flat = torch.cat([m.reshape(-1) for m in masks]) if masks else torch.zeros(0, dtype=torch.bool)
    out, start = [], 0
    for m in masks:
        out.append(flat[start : start + m.numel()].view(m.shape))
        start += m.numel()
    return out
