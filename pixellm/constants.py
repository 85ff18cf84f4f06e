"""Constants shared by every part of pixellm (one home for each)."""

IGNORE_INDEX = -100
"""Label value that the cross-entropy ignores (prompt, image and padding positions)."""

IMAGE_TOKEN = "<image>"
"""Placeholder in the prompt; the processor expands it to one token per image feature."""

SEG_PLACEHOLDER = "<seg>"
"""Placeholder for one target's codebook group in data answers (custom JSONL, synthetic)."""

NO_TARGET_ANSWER = "There is no such object in the image."
"""Fixed answer for a question whose referent is absent (gRefCOCO no-target, synthetic)."""

SCORING_PROTOCOLS = ("muse", "custom", "refer", "grefcoco", "reasonseg", "joint")
"""How a split is scored (evaluation.metrics; "joint": answers and grounding, evaluation.joint):
`pixellm score PROTOCOL` and evaluate.py."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def seg_token_strings(num_scales: int, tokens_per_scale: int) -> list[str]:
    """Codebook token strings, scale-major: [SEG0..SEG{N-1}] is scale 0, and so on."""
    return [f"[SEG{i}]" for i in range(num_scales * tokens_per_scale)]
