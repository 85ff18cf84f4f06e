"""The Llama-style SentencePiece tokenizer of the rehearsal checkpoint (pixellm.rehearsal.checkpoint):
its whitespace around added tokens (a lone "▁" piece before [SEG0]) must not split what training
labels, generation and the codebook positions agree on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_batch, tiny_model_config
from PIL import Image

from pixellm.config import LossWeights
from pixellm.rehearsal.checkpoint import LLAMA_VOCAB, llama_style_tokenizer

QUESTION = "Which objects would you need to make tea here?"
ANSWER = "The kettle <seg> on the stove and the cup <seg>."


@pytest.fixture(scope="module")
def tokenizer():
    return llama_style_tokenizer()


def test_it_has_llava_hfs_special_ids_and_sentencepiece_pieces(tokenizer):
    assert len(tokenizer) == LLAMA_VOCAB + 2
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<image>", "<pad>"]) == [0, 1, 2, 32000, 32001]
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("the cup.\nü", add_special_tokens=False)["input_ids"])
    assert pieces[:2] == ["▁the", "▁cup"] and "<0x0A>" in pieces and "<0xC3>" in pieces  # ▁ words, byte fallback


@pytest.fixture(scope="module")
def memorised(tokenizer):
    """A tiny LLaVA with this tokenizer, trained to answer ANSWER (two codebook groups)."""
    from pixellm.build import build_pixellm, random_tiny_llava
    from pixellm.predictor import PixelLMPredictor

    cfg = tiny_model_config(train_llm=True)
    torch.manual_seed(0)
    model = build_pixellm(cfg, llava=random_tiny_llava(cfg, tokenizer), tokenizer=tokenizer)
    batch = make_batch(model, [ANSWER] * 3)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(60):
        loss = model(batch, loss_weights=LossWeights()).loss
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    return PixelLMPredictor(model.eval())


def test_a_lone_space_piece_precedes_the_codebook_group_in_training_labels(memorised):
    proc, seg = memorised.processor, memorised.model.config.seg_token_ids
    enc = proc.encode(QUESTION, ANSWER)
    pieces = proc.tokenizer.convert_ids_to_tokens(enc.input_ids.tolist())
    first = pieces.index("[SEG0]")
    assert pieces[first - 2: first] == ["▁kettle", "▁"]  # SentencePiece writes the space before an added token alone
    assert enc.labels[first - 1] != -100  # and the answer trains it, so generation emits it too
    assert enc.input_ids[first: first + len(seg)].tolist() == seg


def test_teacher_forcing_the_generated_answer_finds_the_same_groups_and_codebook_states(memorised):
    """Generate, decode to text, encode that text as training would: the same tokens, the same
    groups, and the codebook states the decoder got during generation."""
    from pixellm.data.batch import Batch
    from pixellm.generation import GenerationConfig, generate
    from pixellm.modeling.codebook import find_codebook_groups
    from pixellm.modeling.pixellm import codebook_states

    model, proc = memorised.model, memorised.processor
    image = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    pixels, meta = proc.preprocess_image(image)
    prompt = proc.encode_prompt(QUESTION)
    with torch.no_grad():
        vision = model.encode_images(pixels[None])
        out = generate(model, [prompt], vision, torch.zeros(1, dtype=torch.long), GenerationConfig(max_new_tokens=40))[0]
        text = memorised.decode_text(out.token_ids)
        enc = proc.encode(QUESTION, text)  # the generated answer as a training sample
        assert enc.input_ids.tolist() == prompt.tolist() + out.token_ids + [proc.tokenizer.eos_token_id]
        ids = enc.input_ids[None]
        batch = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels[None],
                      image_index=torch.zeros(1, dtype=torch.long), image_meta=[meta])
        hidden = model(batch).hidden_states[0]
    groups = find_codebook_groups(ids[0], model.config.seg_token_ids)
    assert text.count("<seg>") == groups.shape[0] == out.seg_hidden.shape[0] == 2
    torch.testing.assert_close(out.seg_hidden, codebook_states(hidden, groups, model.config.settings.query_window),
                               atol=1e-4, rtol=1e-4)
