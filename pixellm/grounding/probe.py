"""Probe one model's emergent grounding on a dataset split (`pixellm probe-grounding`).

For each question the answer is run teacher-forced with attention weights returned. Each target's
phrase (the referring expression, or the phrase before its codebook group) is located in the
answer's tokens; per LLM layer and aggregated over layers the phrase's normalised map gives a
peak point (PointAcc: it falls inside the ground-truth mask) and an attention mask (its IoU).
Chance = the mean ground-truth area fraction: what a uniformly random point scores. A trained
PixelLM's decoder masks for the same answers sit beside them. "When" (PixFoundation): on the
model's own generated answer, the oracle token per target (its map's mask best matches the
ground truth), its relative position in the answer and its word, and an automatic choice (the
most concentrated map: largest normalised peak) scored against it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from ..constants import SEG_PLACEHOLDER
from ..data.batch import ImageMeta
from ..data.muse import template_answer
from ..data.records import QARecord
from ..predictor import PixelLMPredictor, as_rgb, split_phrases
from .attention import (
    AnswerAttention,
    aggregate,
    answer_attention,
    attention_mask,
    grid_of,
    map_to_image,
    normalize,
    peak_point,
    point_in_mask,
)

HIST_BINS = 10  # relative-position histogram of the oracle tokens (0 = answer start, 1 = end)


@dataclass
class ProbeSettings:
    """layers: LLM layers aggregated (None = all); heads: heads averaged (None = all);
    normalise: subtract the answer's mean map (attention.normalize); decoder: also score the
    PixelLM decoder (a trained PixelLM); when: also run the generated-answer analysis."""

    layers: list[int] | None = None
    heads: list[int] | None = None
    normalise: bool = True
    decoder: bool = True
    when: bool = True
    max_new_tokens: int = 64
    sam: str | None = None  # a SamModel folder: also segment from the aggregated peak (grounding.sam)


@dataclass
class Target:
    """One object to localise: its phrase, (H, W) bool GT mask, and answer-token indices."""

    phrase: str
    mask: np.ndarray
    tokens: list[int]


@dataclass
class Tally:
    """Running sums of one probe (one model on one split)."""

    layer_hits: list[int] = field(default_factory=list)
    layer_ious: list[float] = field(default_factory=list)
    agg_hits: int = 0
    agg_iou: float = 0.0
    sam_iou: float = 0.0
    targets: int = 0
    area: float = 0.0
    decoder_iou: float = 0.0
    skipped: Counter = field(default_factory=Counter)
    positions: list[float] = field(default_factory=list)
    words: Counter = field(default_factory=Counter)
    oracle_hits: int = 0
    auto_hits: int = 0
    auto_agrees: int = 0
    when_targets: int = 0


def probe_answer(record: QARecord, codebook: bool) -> tuple[str, list[str]]:
    """(answer text with `<seg>` per target, phrases in order): the record's answer when it names
    its phrases in order (MUSE, custom, synthetic), else the training template built from them
    (REFER's evaluation answer "It is <seg>." does not name the expression). Without a trained
    codebook the `<seg>` placeholders are dropped from what the model reads."""
    phrases = record.phrases or split_phrases(record.answer)
    if not phrases:  # a question without a target ("no such object"): nothing to localise
        return record.answer, []
    answer = record.answer if _names_in_order(record.answer, phrases) else template_answer(phrases)
    if not codebook:
        answer = answer.replace(f" {SEG_PLACEHOLDER}", "").replace(SEG_PLACEHOLDER, "")
    return answer, phrases


def _names_in_order(text: str, phrases: list[str]) -> bool:
    at, low = 0, text.lower()
    for p in phrases:
        at = low.find(p.lower(), at)
        if at < 0:
            return False
        at += len(p)
    return bool(phrases)


def locate_phrases(tokenizer, text: str, phrases: list[str]) -> tuple[list[int], list[list[int]]]:
    """Tokenize `text` (as the processor does: no special tokens) and find each phrase's tokens,
    left to right. Returns (token ids, token indices per phrase; [] for a phrase not found)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    low, at, spans = text.lower(), 0, []
    for p in phrases:
        start = low.find(p.lower(), at)
        if start < 0:
            spans.append([])
            continue
        end = start + len(p)
        at = end
        spans.append([i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start and b > a])
    return list(enc["input_ids"]), spans


def record_targets(record: QARecord, phrases: list[str], spans: list[list[int]], gts: list[np.ndarray],
                   skipped: Counter) -> list[Target]:
    """Pair phrases with GT masks: one each, or one phrase for the union of several masks
    (gRefCOCO's multi-target expressions). Questions without a target are counted, not probed."""
    present = [g for g in gts if g.any()]
    if not present:
        skipped["no target"] += 1
        return []
    if len(phrases) == len(gts):
        pairs = [(p, s, g) for p, s, g in zip(phrases, spans, gts, strict=True) if g.any()]
    elif len(phrases) == 1:
        pairs = [(phrases[0], spans[0], np.logical_or.reduce(present))]
    else:
        skipped["phrases do not match masks"] += 1
        return []
    out = []
    for phrase, span, mask in pairs:
        if not span:
            skipped["phrase not found in the answer"] += 1
            continue
        out.append(Target(phrase, mask, span))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def score_map(flat: torch.Tensor, target: Target, meta: ImageMeta, input_size: int) -> tuple[bool, float, tuple | None]:
    """(PointAcc hit, attention-mask IoU, peak point) of one (N,) map for one target."""
    grid = grid_of(flat)
    point = peak_point(grid, meta, input_size)
    hit = point_in_mask(point, torch.from_numpy(target.mask))
    mask = attention_mask(map_to_image(grid, meta, input_size)).numpy()
    return hit, _iou(mask, target.mask), point


class GroundingProbe:
    """Runs the probe over records and keeps the tally (see the module docstring)."""

    def __init__(self, predictor: PixelLMPredictor, settings: ProbeSettings, codebook: bool) -> None:
        self.predictor, self.settings, self.codebook = predictor, settings, codebook
        self.processor = predictor.processor
        self.model = predictor.model
        self.tally = Tally()
        self.sam = None
        if settings.sam:
            from .sam import SamPointSegmenter

            self.sam = SamPointSegmenter(settings.sam, predictor.device)

    def maps(self, pixels: torch.Tensor, vision, question: str, answer_ids: list[int]) -> AnswerAttention:
        prompt = self.processor.prompt_ids(question)
        att = answer_attention(self.model, pixels, prompt, answer_ids, self.settings.heads, vision)
        if self.settings.normalise:
            att.maps = normalize(att.maps)
        return att

    def add(self, record: QARecord, gts: list[np.ndarray]) -> None:
        """Probe one question (gts: its decoded GT masks at the image size)."""
        t, s = self.tally, self.settings
        image = as_rgb(record.image_path)
        pixels, meta = self.processor.preprocess_image(image)
        pixels = pixels[None].to(self.predictor.device)
        answer, phrases = probe_answer(record, self.codebook)
        text = self.model.config.template.answer(answer.replace(SEG_PLACEHOLDER, self.processor.group))
        ids, spans = locate_phrases(self.model.tokenizer, text, phrases)
        targets = record_targets(record, phrases, spans, gts, t.skipped)
        if not targets:
            return
        with torch.no_grad():
            vision = self.model.encode_images(pixels)  # once for the teacher-forced and generated passes
        att = self.maps(pixels, vision, record.question, ids)
        size = self.processor.image_size
        if not t.layer_hits:
            n = att.maps.shape[0]
            t.layer_hits, t.layer_ious = [0] * n, [0.0] * n
        decoder = self._decoder_masks(image, record.question, answer) if self.codebook and s.decoder else None
        for j, target in enumerate(targets):
            for layer in range(att.maps.shape[0]):
                hit, iou, _ = score_map(aggregate(att.maps, [layer], target.tokens), target, meta, size)
                t.layer_hits[layer] += hit
                t.layer_ious[layer] += iou
            hit, iou, point = score_map(aggregate(att.maps, s.layers, target.tokens), target, meta, size)
            t.agg_hits += hit
            t.agg_iou += iou
            if self.sam is not None:  # a peak in the padding prompts nothing: IoU 0
                t.sam_iou += _iou(self.sam(image, point), target.mask) if point is not None else 0.0
            t.targets += 1
            t.area += float(target.mask.mean())
            if decoder is not None:
                t.decoder_iou += _iou(decoder[j], target.mask) if j < len(decoder) else 0.0
        if s.when:
            self._when(pixels, vision, meta, record.question, targets)

    def _decoder_masks(self, image, question: str, answer: str) -> list[np.ndarray]:
        (pred,) = self.predictor.segment_with_answers(image, [question], [answer])
        return [seg.mask for seg in pred.segments]

    def _when(self, pixels: torch.Tensor, vision, meta: ImageMeta, question: str, targets: list[Target]) -> None:
        """PixFoundation's question: which token of the model's own answer grounds each target."""
        t, s = self.tally, self.settings
        pred = self._generate(vision, question, pixels.device)
        text = self.model.config.template.answer(pred.replace(SEG_PLACEHOLDER, self.processor.group))
        ids, _ = locate_phrases(self.model.tokenizer, text, [])
        codebook = set(self.model.config.seg_token_ids)
        candidates = [i for i, tok in enumerate(ids) if tok not in codebook]
        if len(candidates) < 1:
            t.skipped["generated answer has no text token"] += len(targets)
            return
        att = self.maps(pixels, vision, question, ids)
        per_token = (att.maps if s.layers is None else att.maps[list(s.layers)]).mean(0)  # (T, N)
        size = self.processor.image_size
        peaks = per_token.max(dim=1).values
        auto = max(candidates, key=lambda i: float(peaks[i]))
        for target in targets:
            scored = [(score_map(per_token[i], target, meta, size), i) for i in candidates]
            (hit, _, _), oracle = max(scored, key=lambda x: (x[0][1], x[0][0], -x[1]))
            auto_hit = scored[candidates.index(auto)][0][0]
            t.when_targets += 1
            t.positions.append(oracle / max(1, len(ids) - 1))
            t.words[self.model.tokenizer.decode([ids[oracle]]).strip()] += 1
            t.oracle_hits += hit
            t.auto_hits += auto_hit
            t.auto_agrees += int(auto == oracle)

    def _generate(self, vision, question: str, device: torch.device) -> str:
        """The model's own answer (greedy), with `<seg>` for each codebook group."""
        from ..generation import GenerationConfig, generate

        prompt = [self.processor.encode_prompt(question).to(device)]
        index = torch.zeros(1, dtype=torch.long, device=device)
        (out,) = generate(self.model, prompt, vision, index, GenerationConfig(max_new_tokens=self.settings.max_new_tokens))
        return self.predictor.decode_text(out.token_ids)

    def result(self) -> dict:
        """The probe's figures (JSON-able); None where nothing was scored."""
        t = self.tally
        n = t.targets

        def frac(x: float, d: int) -> float | None:
            return x / d if d else None

        out = {
            "num_targets": n,
            "skipped": dict(t.skipped),
            "chance_point_acc": frac(t.area, n),
            "normalised": self.settings.normalise,
            "layers": [{"layer": i, "point_acc": frac(h, n), "mask_iou": frac(u, n)}
                       for i, (h, u) in enumerate(zip(t.layer_hits, t.layer_ious))],
            "aggregate": {"layers": self.settings.layers or "all", "point_acc": frac(t.agg_hits, n),
                          "mask_iou": frac(t.agg_iou, n)},
            "decoder": {"gIoU": frac(t.decoder_iou, n)} if self.codebook and self.settings.decoder else None,
            "sam": {"model": self.settings.sam, "mask_iou": frac(t.sam_iou, n)} if self.sam is not None else None,
        }
        if self.settings.when:
            counts, edges = np.histogram(t.positions, bins=HIST_BINS, range=(0.0, 1.0))
            out["when"] = {
                "num_targets": t.when_targets,
                "oracle_positions": [round(p, 4) for p in t.positions],
                "histogram": {"edges": edges.round(2).tolist(), "counts": counts.tolist()},
                "oracle_words": dict(t.words.most_common(20)),
                "oracle_point_acc": frac(t.oracle_hits, t.when_targets),
                "auto": {"rule": "most concentrated map (largest normalised peak)",
                         "point_acc": frac(t.auto_hits, t.when_targets),
                         "agrees_with_oracle": frac(t.auto_agrees, t.when_targets)},
            }
        return out
