"""The processor: the only owner of image transforms, `<image>` expansion, the chat template,
codebook-group insertion, label masking and truncation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from .constants import CLIP_MEAN, CLIP_STD, IGNORE_INDEX, IMAGE_TOKEN, SEG_PLACEHOLDER
from .conversation import codebook_token_in, strip_image_tag
from .data.batch import ImageMeta, Sample
from .data.errors import DataError, Problem
from .data.images import ImageReadError, read_image
from .data.masks import MaskDecodeError, decode_mask
from .data.records import QARecord
from .modeling.pixellm import PixelLMConfig


class SampleTooLongError(DataError):
    """Even with every target dropped, a sample does not fit the token budget."""


class UserTextError(DataError):
    """A question or answer holding the model's own tokens (a codebook token, or <image> in an answer)."""


def clean_user_text(question: str, answer: str | None = None) -> str:
    """The question with any literal "<image>" removed (the processor places the image itself,
    as LLaVA-converted data expects); UserTextError if the question or answer writes a codebook
    token, or the answer "<image>": they would be read as the model's own tokens."""
    question = strip_image_tag(question)
    for name, text in (("question", question), ("answer", answer or "")):
        token = codebook_token_in(text)
        if token:
            raise UserTextError(f"the {name} contains the codebook token {token}: data marks a mask with "
                                f"{SEG_PLACEHOLDER}, and codebook tokens are the model's own")
    if answer and IMAGE_TOKEN in answer:
        raise UserTextError(f"the answer contains {IMAGE_TOKEN}, which only the prompt may hold")
    return question


@dataclass
class Encoded:
    """Token ids of one question (and answer). input_ids/labels: (S,) long.
    kept_targets: how many of the answer's targets survived truncation; truncated: the answer
    was cut to fit max_length (it then ends without EOS)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    kept_targets: int
    truncated: bool = False


class PixelLMProcessor:
    def __init__(self, *, tokenizer, config: PixelLMConfig, max_length: int = 512) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = max_length
        self.group = "".join(config.seg_tokens)
        self.image_size = config.image_size
        self._prefix: tuple[str, list[int]] | None = None

    @classmethod
    def from_model(cls, model, max_length: int = 512) -> PixelLMProcessor:
        return cls(tokenizer=model.tokenizer, config=model.config, max_length=max_length)

    # ------------------------------------------------------------------ images
    def preprocess_image(self, image: Image.Image) -> tuple[torch.Tensor, ImageMeta]:
        """RGB PIL image -> (3, R, R) normalised pixels (longest side resized to R, zero padding
        bottom/right after normalisation) and its ImageMeta."""
        w, h = image.size
        r = self.image_size
        scale = r / max(h, w)
        valid = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = TF.resize(TF.to_image(image.convert("RGB")), list(valid), antialias=True)  # uint8: cheaper
        x = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), CLIP_MEAN, CLIP_STD)
        x = TF.pad(x, [0, 0, r - valid[1], r - valid[0]], fill=0.0)
        return x, ImageMeta(original_size=(h, w), valid_size=valid)

    # ------------------------------------------------------------------ text
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, question: str) -> list[int]:
        """BOS + template prompt with `<image>` expanded to num_image_tokens image-token ids
        (a literal "<image>" in the question is removed first: clean_user_text)."""
        prompt = self.config.template.prompt(clean_user_text(question), with_image=True)
        before, after = prompt.split(IMAGE_TOKEN, 1)
        if self._prefix is None or self._prefix[0] != before:  # system + image block: the same every time (unless question_first)
            bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
            image = [self.config.image_token_id] * self.config.num_image_tokens
            self._prefix = (before, bos + self._ids(before) + image)
        return self._prefix[1] + self._ids(after)

    def answer_ids(self, answer: str, keep_targets: int | None = None) -> list[int]:
        """Answer tokens with each `<seg>` replaced by the codebook group, + EOS when whole.

        keep_targets: keep only the first k targets; the text after the k-th group is cut, so a
        group is never split and the text never refers to a dropped mask. A cut answer ends
        without EOS: the model must not learn to stop after k targets when the answer goes on
        (many-target questions, MUSE's test_many, are exactly the long ones).
        """
        parts = answer.split(SEG_PLACEHOLDER)
        n = len(parts) - 1
        k = n if keep_targets is None else keep_targets
        if k == n:
            return self._ids(self.config.template.answer(self.group.join(parts))) + [self.tokenizer.eos_token_id]
        # cut after the k-th group (k = 0: the text before the first target only)
        text = self.group.join(parts[:k]) + self.group if k else parts[0].rstrip()
        return self._ids(self.config.template.answer(text))

    def encode(self, question: str, answer: str) -> Encoded:
        """Tokenize a question and its answer; labels are the answer tokens only.

        A too-long answer drops whole trailing targets; a too-long text-only answer (VQA) is cut
        at the budget, as LLaVA does; either way no EOS is trained after a cut. SampleTooLongError
        if no target fits (or the prompt alone leaves no room).
        """
        clean_user_text(question, answer)
        prompt = self.prompt_ids(question)
        n = answer.count(SEG_PLACEHOLDER)
        room = self.max_length - len(prompt)
        for k in range(n, -1, -1):
            ans = self.answer_ids(answer, keep_targets=k)
            if n == 0 and room > 0:
                ans = ans[:room]  # text only: nothing to keep whole; the cut drops the EOS with the tail
            if len(ans) <= room:
                if k == 0 and n > 0:
                    break
                ids = torch.tensor(prompt + ans, dtype=torch.long)
                labels = torch.tensor([IGNORE_INDEX] * len(prompt) + ans, dtype=torch.long)
                truncated = k < n or (n == 0 and ans[-1:] != [self.tokenizer.eos_token_id])
                return Encoded(ids, self.mask_forced_tokens(labels), k, truncated)
        raise SampleTooLongError(
            f"prompt of {len(prompt)} tokens + answer does not fit max_length={self.max_length} "
            f"with any of its {n} targets"
        )

    def mask_forced_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """No text loss on [SEG1]..[SEG{K-1}]: generation forces them after [SEG0], and training
        the states before them to predict a fixed token would make every group's states alike,
        erasing what the mask decoder needs to tell targets apart. [SEG0] (whether and when to
        emit a group) is still trained."""
        forced = torch.isin(labels, torch.tensor(self.config.seg_token_ids[1:]))
        return labels.masked_fill(forced, IGNORE_INDEX)

    def encode_prompt(self, question: str) -> torch.Tensor:
        """(S,) input ids for generation: the prompt only."""
        return torch.tensor(self.prompt_ids(question), dtype=torch.long)

    # ------------------------------------------------------------------ records
    def __call__(self, record: QARecord) -> Sample:
        """QARecord -> Sample: image loaded and transformed, masks decoded at original size."""
        where = f"question {record.question_id}"
        try:
            image = read_image(record.image_path)
        except ImageReadError as e:
            raise DataError(Problem(str(record.image_path), where, f"image {e}")) from None
        pixels, meta = self.preprocess_image(image)
        h, w = meta.original_size
        if record.height is not None and (record.height, record.width) != (h, w):
            raise DataError(Problem(str(record.image_path), where, f"annotation size {record.height}x{record.width} != image {h}x{w}"))
        try:
            enc = self.encode(record.question, record.answer)
        except DataError as e:  # too long, or user text with the model's tokens: name the record
            raise type(e)(Problem(str(record.image_path), where, str(e))) from None
        try:
            masks = [decode_mask(m, h, w, record.mask_root) for m in record.masks[: enc.kept_targets]]
        except MaskDecodeError as e:
            raise DataError(Problem(str(record.image_path), where, str(e))) from None
        stacked = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.bool)
        return Sample(
            input_ids=enc.input_ids, labels=enc.labels, pixel_values=pixels, masks=stacked, image_meta=meta,
            image_key=str(record.image_path), source=record.source, image_id=record.image_id,
            question_id=record.question_id,
            extra={"dropped_targets": record.num_targets - enc.kept_targets, "truncated": enc.truncated},
        )
