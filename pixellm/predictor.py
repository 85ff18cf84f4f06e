"""`PixelLMPredictor`: a small stateful inference API (image in, text + phrase-tied masks out)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .constants import SEG_PLACEHOLDER
from .data.batch import Sample, collate
from .data.images import read_image, to_rgb
from .generation import GenerationConfig, generate
from .modeling.pixellm import PixelLM
from .precision import resolve_dtype
from .processor import PixelLMProcessor


@dataclass
class Segment:
    """One referred object: the phrase before its codebook group, its (H, W) bool mask and a
    confidence (mean probability over the predicted foreground)."""

    phrase: str
    mask: np.ndarray
    score: float


@dataclass
class Prediction:
    """text: the answer with each codebook group written as `<seg>`; segments in text order."""

    text: str
    segments: list[Segment]


_LEADING = re.compile(r"^(?:[\s,.;:]|and\b|or\b|then\b)+", re.IGNORECASE)


def split_phrases(text: str) -> list[str]:
    """The phrase each `<seg>` refers to: the text since the previous group or sentence break."""
    parts = text.split(SEG_PLACEHOLDER)[:-1]
    phrases = []
    for part in parts:
        tail = re.split(r"[.;:!?\n]", part)[-1]
        phrases.append(_LEADING.sub("", tail).strip(" ,"))
    return phrases


def as_rgb(image: Image.Image | str | Path) -> Image.Image:
    """A PIL image (converted to RGB as data.images.to_rgb does) or a path read with
    data.images.read_image (EXIF orientation applied, 16-bit and palette files handled)."""
    return to_rgb(image) if isinstance(image, Image.Image) else read_image(image)


def mask_score(logits: torch.Tensor) -> torch.Tensor:
    """(n, H, W) logits -> (n,) mean sigmoid over the predicted-positive pixels (0 if none)."""
    prob = logits.sigmoid()
    pos = logits > 0
    return torch.where(pos, prob, torch.zeros_like(prob)).flatten(1).sum(1) / pos.flatten(1).sum(1).clamp(min=1)


class PixelLMPredictor:
    def __init__(self, model: PixelLM, *, max_length: int = 4096) -> None:
        self.model = model.eval()
        self.processor = PixelLMProcessor.from_model(model, max_length=max_length)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str = "cpu", dtype: torch.dtype | str = "auto"
    ) -> PixelLMPredictor:
        """dtype: a torch dtype or "auto"/"bf16"/"fp16"/"fp32" (auto: bf16 on CUDA GPUs that
        support it, else fp16 on CUDA, fp32 on CPU; precision.resolve_dtype)."""
        if isinstance(dtype, str):
            dtype = resolve_dtype(dtype, device)
        return cls(PixelLM.from_pretrained(path, device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def decode_text(self, token_ids: list[int]) -> str:
        """Token ids -> text with each whole codebook group written as `<seg>`.

        The answer is decoded in one piece, with one marker token per group, so the tokenizer's
        own rules for the spaces around added tokens apply: decoding the words between groups
        piece by piece loses the space a SentencePiece tokenizer keeps in "▁on" after a group
        ("<seg>on"), and the text would no longer encode back to the tokens generated.
        """
        tok, seg = self.model.tokenizer, self.model.config.seg_token_ids
        special = set(tok.all_special_ids) - {seg[0]}
        kept = [t for t in token_ids if t not in seg[1:] and t not in special]
        text = tok.decode(kept, skip_special_tokens=False)
        return text.replace(tok.convert_ids_to_tokens(seg[0]), SEG_PLACEHOLDER).strip()

    @torch.no_grad()
    def predict_batch(self, image: Image.Image | str | Path, questions: list[str], **generation) -> list[Prediction]:
        """Answer several questions about one image; the image is encoded once."""
        pixels, meta = self.processor.preprocess_image(as_rgb(image))
        pixels = pixels[None].to(self.device)
        vision = self.model.encode_images(pixels)
        prompts = [self.processor.encode_prompt(q) for q in questions]
        index = torch.zeros(len(questions), dtype=torch.long, device=self.device)
        outs = generate(self.model, prompts, vision, index, GenerationConfig(**generation))
        masks = self.model.decode_masks([o.seg_hidden for o in outs], vision, index, pixels)
        results = []
        for out, logits in zip(outs, masks):
            full = self.model.postprocess_masks(logits, meta).float()
            text = self.decode_text(out.token_ids)
            phrases = split_phrases(text)
            scores = mask_score(full)
            segments = [
                Segment(phrase=p, mask=(m > 0).cpu().numpy(), score=float(s))
                for p, m, s in zip(phrases, full, scores)
            ]
            results.append(Prediction(text=text, segments=segments))
        return results

    @torch.no_grad()
    def segment_with_answers(self, image: Image.Image | str | Path, questions: list[str], answers: list[str]) -> list[Prediction]:
        """Teacher-forced masks: each answer (with `<seg>` placeholders) is given, and one forward
        pass over all of an image's questions decodes the groups (the RefCOCO peers' protocol)."""
        pixels, meta = self.processor.preprocess_image(as_rgb(image))
        samples = []
        for q, a in zip(questions, answers):
            enc = self.processor.encode(q, a)
            samples.append(Sample(
                input_ids=enc.input_ids, labels=enc.labels, pixel_values=pixels, masks=torch.zeros(0),
                image_meta=meta, image_key="image",
            ))
        batch = collate(samples, self.model.tokenizer.pad_token_id)
        batch.masks = None
        out = self.model(batch.to(self.device))
        results = []
        for answer, logits in zip(answers, out.mask_logits):
            full = self.model.postprocess_masks(logits, meta).float()
            segments = [
                Segment(phrase=p, mask=(m > 0).cpu().numpy(), score=float(sc))
                for p, m, sc in zip(split_phrases(answer), full, mask_score(full))
            ]
            results.append(Prediction(text=answer, segments=segments))
        return results

    def predict(self, image: Image.Image | str | Path, question: str, **generation) -> Prediction:
        """Answer one question: the text and an ordered list of (phrase, mask, score)."""
        return self.predict_batch(image, [question], **generation)[0]
