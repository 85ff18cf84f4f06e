"""A random checkpoint with llava-hf/llava-1.5-7b-hf's exact configuration (CLIP ViT-L/14 at 336
px, all 24 layers; the projector; a 4096-wide LLM with 32 heads, 11008 MLP, vocabulary 32064)
except the LLM's depth, saved with `save_pretrained` in the llava-hf layout, with a Llama-style
tokenizer built here: SentencePiece-style "▁" word boundaries, byte fallback, <s> </s> <unk>,
and <image> = 32000, <pad> = 32001 as llava-hf ships them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

LLAMA_VOCAB = 32000
"""Base vocabulary of the Llama-1/Vicuna SentencePiece model (ids 0-31999)."""

CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: What is in the image? Which objects would you need to make tea here?",
    "The kettle on the stove and the cup next to the sink. There is no such object in the image.",
    "Segment the person, the dog, the car, the chair, the table, the bottle, the cup, the bowl.",
    "Please segment the wall, the floor, the ceiling, the sky, the tree, the grass, the road.",
    "Where is the man on the left? The woman in red. The second bike from the right.",
    "What colour is it? It is red, green, blue, yellow, white, black, brown, orange, purple.",
]
"""Text the BPE merges are learnt from: the chat template and the words of the rehearsal data."""


def _learned_pieces(corpus: Iterable[str], vocab_size: int) -> tuple[list[str], list[tuple[str, str]]]:
    """BPE pieces and merges learnt on `corpus` with Llama's "▁" for spaces, word by word (as
    SentencePiece learns: no piece spans two words), at most `vocab_size` pieces."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[])
    tok.train_from_iterator(corpus, trainer)
    model = tok.get_vocab()
    pieces = sorted(model, key=model.get)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in _merges_of(tok)]
    return pieces, merges


def _merges_of(tok) -> list:
    import json

    return json.loads(tok.to_str())["model"]["merges"]


def llama_style_tokenizer(corpus: Iterable[str] = CORPUS):
    """transformers' LlamaTokenizer (the Llama pipeline: Metaspace "▁", byte fallback) over a
    32000-entry vocabulary: <unk> <s> </s>, the 256 byte pieces <0x00>..<0xFF>, pieces learnt on
    `corpus`, then unused fillers; then <image> (32000) and <pad> (32001) added as llava-hf does."""
    from transformers import LlamaTokenizer

    corpus = list(corpus)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    pieces, merges = _learned_pieces(corpus, LLAMA_VOCAB - len(vocab))
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    filler = 0
    while len(vocab) < LLAMA_VOCAB:  # unreachable pieces keep the real ids of the added tokens
        vocab.setdefault(f"<unused{filler}>", len(vocab))
        filler += 1
    tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False)
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    if tok.convert_tokens_to_ids(["<image>", "<pad>"]) != [LLAMA_VOCAB, LLAMA_VOCAB + 1]:
        raise AssertionError("the tokenizer's <image>/<pad> ids differ from llava-hf's 32000/32001")
    return tok


def llava_7b_config(llm_layers: int = 2):
    """llava-hf/llava-1.5-7b-hf's configuration (pixellm.presets) with `llm_layers` LLM layers."""
    from ..config import ModelConfig
    from ..presets import llava_7b

    cfg = llava_7b(ModelConfig(preset="pixellm-7b"))
    cfg.text_config.num_hidden_layers = llm_layers
    return cfg


def write_checkpoint(out: str | Path, *, llm_layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Save a random LLaVA-1.5-7B-shaped model (`llm_layers` deep) and its tokenizer to `out`
    in the llava-hf layout (config.json, safetensors shards, tokenizer files), as `dtype`
    (bf16, as llava-hf ships it: half the disk). Returns `out`."""
    from transformers import LlavaForConditionalGeneration

    out = Path(out)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(llava_7b_config(llm_layers), dtype=dtype)
    model.save_pretrained(out, max_shard_size="2GB")
    llama_style_tokenizer().save_pretrained(out)
    return out
