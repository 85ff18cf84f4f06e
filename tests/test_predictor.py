import numpy as np
import pytest
import torch
from conftest import build_tiny, make_batch
from PIL import Image

from pixellm.config import LossWeights
from pixellm.constants import SEG_PLACEHOLDER
from pixellm.data.batch import Batch
from pixellm.generation import CodebookGroupProcessor
from pixellm.losses import compute_losses
from pixellm.predictor import PixelLMPredictor, split_phrases

ANSWER = f"red {SEG_PLACEHOLDER} and blue {SEG_PLACEHOLDER}."


@pytest.fixture(scope="module", params=[1, 3], ids=["query_window1", "query_window3"])
def memorised(request):
    """A tiny model trained for a few seconds to answer with two codebook groups."""
    # a random LLM memorises reliably only when fully trained
    model = build_tiny(seed=1, train_llm=True, query_window=request.param)
    batch = make_batch(model, [ANSWER] * 3)  # three random images: the answer must not hang on one
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(60):
        loss = compute_losses(model, model(batch), batch, LossWeights())
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    return PixelLMPredictor(model.eval())


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((40, 50, 3)) * 255).astype("uint8"))


def test_generated_masks_align_with_the_codebook_groups_in_the_text(memorised, image):
    pred = memorised.predict(image, "Segment the shapes.", max_new_tokens=40)
    # the model was taught two groups; whatever words it kept, every group gives one mask
    assert pred.text.count(SEG_PLACEHOLDER) == len(pred.segments) == 2
    assert [s.phrase for s in pred.segments] == split_phrases(pred.text)
    assert all(s.mask.shape == (40, 50) and s.mask.dtype == bool for s in pred.segments)


def test_kv_cache_generation_matches_a_no_cache_reference_pass(memorised, image):
    cached = memorised.predict_batch(image, ["Segment the shapes.", "What is here?"], max_new_tokens=40)
    plain = memorised.predict_batch(image, ["Segment the shapes.", "What is here?"], max_new_tokens=40, use_cache=False)
    for a, b in zip(cached, plain):
        assert a.text == b.text
        assert len(a.segments) == len(b.segments)
        for sa, sb in zip(a.segments, b.segments):
            assert np.array_equal(sa.mask, sb.mask)
            assert sa.score == pytest.approx(sb.score, abs=1e-5)


def test_generated_masks_equal_a_teacher_forced_pass_over_the_generated_answer(memorised, image):
    model, proc = memorised.model, memorised.processor
    pred = memorised.predict(image, "Segment the shapes.", max_new_tokens=40)
    enc = proc.encode("Segment the shapes.", pred.text)
    pixels, meta = proc.preprocess_image(image)
    batch = Batch(
        input_ids=enc.input_ids[None], attention_mask=torch.ones_like(enc.input_ids)[None],
        pixel_values=pixels[None], image_index=torch.zeros(1, dtype=torch.long), image_meta=[meta],
    )
    with torch.no_grad():
        logits = model.postprocess_masks(model(batch).mask_logits[0], meta)
    for seg, lg in zip(pred.segments, logits):
        agree = (seg.mask == (lg > 0).numpy()).mean()
        assert agree > 0.999


def test_group_processor_forces_whole_groups():
    ids = [10, 11, 12]
    proc = CodebookGroupProcessor(ids)
    scores = torch.zeros(3, 20)
    history = torch.tensor([[1, 10], [1, 11], [1, 5]])
    out = proc(history, scores)
    assert out[0].argmax() == 11 and torch.isinf(out[0]).sum() == 19  # after [SEG0] only [SEG1]
    assert out[1].argmax() == 12 and torch.isinf(out[1]).sum() == 19
    assert torch.isinf(out[2, 11]) and torch.isinf(out[2, 12]) and not torch.isinf(out[2, 10])
    proc.remaining = 2  # a group of 3 no longer fits
    assert torch.isinf(proc(history, scores)[2, 10])


def test_sampling_runs_and_keeps_groups_whole(memorised, image):
    torch.manual_seed(0)
    for pred in memorised.predict_batch(image, ["Segment the shapes."] * 3, max_new_tokens=30, do_sample=True, temperature=1.5):
        assert len(pred.segments) == pred.text.count(SEG_PLACEHOLDER)


def test_phrase_splitting():
    assert split_phrases("The kettle <seg> on the stove and the cup <seg>.") == ["The kettle", "on the stove and the cup"]
    assert split_phrases("No mask here.") == []




def test_generated_codebook_states_equal_the_teacher_forced_ones(memorised, image):
    """The states handed to the decoder (with any query_window) match a teacher-forced pass."""
    from pixellm.generation import GenerationConfig, generate
    from pixellm.modeling.codebook import find_codebook_groups
    from pixellm.modeling.pixellm import codebook_states

    model, proc = memorised.model, memorised.processor
    pixels, meta = proc.preprocess_image(image)
    with torch.no_grad():
        vision = model.encode_images(pixels[None])
        out = generate(model, [proc.encode_prompt("Segment the shapes.")], vision, torch.zeros(1, dtype=torch.long),
                       GenerationConfig(max_new_tokens=40))[0]
        ids = torch.cat([proc.encode_prompt("Segment the shapes."), torch.tensor(out.token_ids)])[None]
        batch = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels[None],
                      image_index=torch.zeros(1, dtype=torch.long), image_meta=[meta])
        hidden = model(batch).hidden_states[0]
    groups = find_codebook_groups(ids[0], model.config.seg_token_ids)
    assert groups.shape[0] == out.seg_hidden.shape[0] == 2
    expected = codebook_states(hidden, groups, model.config.settings.query_window)
    torch.testing.assert_close(out.seg_hidden, expected, atol=1e-4, rtol=1e-4)
