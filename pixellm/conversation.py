"""The chat template (LLaVA-1.5 `llava_v1` layout), as data saved with every model."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .constants import IMAGE_TOKEN

_IMAGE_TAG = re.compile(r"\s*" + re.escape(IMAGE_TOKEN) + r"\s*")
_CODEBOOK_TOKEN = re.compile(r"\[SEG\d+\]")
"""Codebook token strings (constants.seg_token_strings), whatever the codebook size."""


def strip_image_tag(text: str) -> str:
    """The text without "<image>" and the whitespace around it (LLaVA-converted questions start
    with "<image>\n"; the processor inserts the image block itself)."""
    return _IMAGE_TAG.sub(" ", text).strip()


def codebook_token_in(text: str) -> str | None:
    """The first codebook token string ("[SEG0]", ...) written in `text`, if any: user text may
    not contain the model's own tokens (data marks a mask with "<seg>")."""
    found = _CODEBOOK_TOKEN.search(text)
    return found.group(0) if found else None

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class ChatTemplate:
    """How one question/answer turn is laid out. Saved in the model config so that training,
    evaluation and inference can never drift apart."""

    system: str = LLAVA_V1_SYSTEM
    user: str = "USER"
    assistant: str = "ASSISTANT"
    question_first: bool = False

    def prompt(self, question: str, with_image: bool = True) -> str:
        """Text before the answer: system, user turn (image, then question), assistant tag.

        question_first puts the image after the question: a causal LLM's image tokens can then
        attend to the question (only for LLMs trained that way; LLaVA-1.5 weights expect image first).
        The answer is appended as " " + answer + EOS, so the first answer token starts a word.
        """
        system = f"{self.system} " if self.system else ""
        if with_image:
            question = f"{question}\n{IMAGE_TOKEN}" if self.question_first else f"{IMAGE_TOKEN}\n{question}"
        return f"{system}{self.user}: {question} {self.assistant}:"

    def answer(self, answer: str) -> str:
        return f" {answer}"
