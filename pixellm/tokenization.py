"""Tokenizer set-up: codebook tokens (checked at start-up) and the offline tiny tokenizer."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .constants import IMAGE_TOKEN
from .conversation import LLAVA_V1_SYSTEM


class CodebookTokenError(ValueError):
    """A codebook token that does not map to exactly one distinct new id."""


def add_codebook_tokens(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> list[int]:
    """Add the `[SEGk]` strings as special tokens and return their ids, in codebook order.

    Every token must encode to exactly one id, the ids must be distinct, and the whole group
    written without separators must encode to exactly those ids. Some tokenizer versions split or
    merge added tokens (PixelLM issue #23: three tokens sharing one id made training silently
    impossible), so this is checked here, at start-up, rather than assumed.
    """
    tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    ids = []
    for t in tokens:
        enc = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise CodebookTokenError(f"codebook token {t!r} encodes to {len(enc)} ids {enc}, expected 1")
        ids.append(enc[0])
    if len(set(ids)) != len(ids):
        raise CodebookTokenError(f"codebook tokens {tokens} map to non-distinct ids {ids}")
    group = tokenizer("".join(tokens), add_special_tokens=False)["input_ids"]
    if group != ids:
        raise CodebookTokenError(f"the codebook group {''.join(tokens)!r} encodes to {group}, expected {ids}")
    return ids


def ensure_image_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id of `<image>`, adding it as a special token when the tokenizer lacks it."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    ids = tokenizer(IMAGE_TOKEN, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise CodebookTokenError(f"{IMAGE_TOKEN!r} encodes to {ids}, expected a single id")
    return ids[0]


DEFAULT_TINY_CORPUS = (
    LLAVA_V1_SYSTEM,
    "USER: ASSISTANT: What is in this image? Please output segmentation masks.",
    "Segment the red circle, the blue square and the green triangle left of the yellow star.",
    "There is no such object in the image. Sure, it is the shape on the right of the picture.",
    "the a an and or of to in on at is are which where what who how many objects things",
    "red green blue yellow purple orange white black gray cyan magenta pink brown",
    "circle square triangle star cross ring diamond rectangle ellipse hexagon shape shapes",
    "left right above below top bottom middle next near far between biggest smallest",
)


def build_tiny_tokenizer(corpus: Iterable[str] = DEFAULT_TINY_CORPUS, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained in memory (no download), for tests and the demo.

    Byte-level, so any text encodes (unseen words just take more tokens).
    """
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    ensure_image_token(fast)
    return fast
