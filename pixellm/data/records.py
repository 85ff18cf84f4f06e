"""`QARecord`: one question about one image, as a loader reads it, before tokenization.

Loaders (one file per source) turn on-disk annotations into QARecords; the processor turns a
QARecord into a tokenized `Sample`. Masks stay encoded until the processor decodes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MaskSpec = Any
"""One target's mask as stored: COCO polygons (list of lists), uncompressed RLE (dict with a
list `counts`), compressed RLE (dict with str/bytes `counts`), or a path to a PNG (str/Path,
non-zero = foreground). Decoded by `pixellm.data.masks.decode_mask`."""


@dataclass
class QARecord:
    """One question about one image.

    answer: the answer text with one SEG_PLACEHOLDER ("<seg>") per target, in the same order as
        `masks`. A question with no target has no placeholder and no mask.
    masks: one MaskSpec per target, in answer order.
    phrases: optional per-target phrase (what the mask refers to), same order as masks.
    height, width: the image size the masks are encoded for (None: read from the image).
    question_id: unique inside its source; each loader's docstring gives its scheme.
    mask_root: folder that relative PNG mask paths resolve against.
    """

    source: str
    image_path: Path
    image_id: int | str
    question_id: str
    question: str
    answer: str
    masks: list[MaskSpec] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)
    height: int | None = None
    width: int | None = None
    mask_root: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_targets(self) -> int:
        return len(self.masks)
