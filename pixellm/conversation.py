"""The chat template (LLaVA-1.5 `llava_v1` layout), as data saved with every model."""

from __future__ import annotations

from dataclasses import dataclass

from .constants import IMAGE_TOKEN

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
