import pytest
import torch
from conftest import make_batch

from pixellm.config import LossWeights
from pixellm.constants import IGNORE_INDEX
from pixellm.data.batch import ImageMeta
from pixellm.losses import compute_losses
from pixellm.region_words import filler_token_ids, mask_cover, phrase_token_ids, region_word_loss

IGN = IGNORE_INDEX


def test_phrase_tokens_run_from_the_previous_group_and_skip_fillers():
    # answer tokens at positions 2..: 7 8 [S S] 9 7 10 [S S] 11
    labels = torch.tensor([IGN, IGN, 7, 8, 50, 51, 9, 7, 10, 50, 51, 11])
    groups = torch.tensor([[4, 5], [9, 10]])
    words = phrase_token_ids(labels, groups, ignore=torch.tensor([9]))
    assert [w.tolist() for w in words] == [[7, 8], [7, 10]]


def test_filler_ids_are_the_joining_words(tiny_model):
    tok = tiny_model.tokenizer
    fillers = {tok.decode([i]).strip().lower() for i in filler_token_ids(tok).tolist()}
    assert {"the", "and", ","} <= fillers
    assert "red" not in fillers and "circle" not in fillers


def test_mask_cover_follows_the_resize_and_padding():
    # a 32x64 image enters a 64x64 frame as 32x64 on top (bottom half padding); 2x2 tokens
    mask = torch.zeros(1, 32, 64, dtype=torch.bool)
    mask[0, :, :32] = True  # the image's left half = the frame's top-left quarter
    cover = mask_cover(mask, ImageMeta((32, 64), (32, 64)), input_size=64, grid=2)
    assert cover.tolist() == [[1.0, 0.0, 0.0, 0.0]]


def _toy_batch(tiny_model, answers):
    batch = make_batch(tiny_model, answers, image_sizes=[(64, 64)] * len(answers))
    for m in batch.masks:  # each target: the image's top-left quarter
        m.zero_()
        m[:, :32, :32] = True
    return batch


def test_region_loss_targets_the_covered_tokens_words(tiny_model):
    batch = _toy_batch(tiny_model, ["The red circle <seg>."])
    groups = _groups(tiny_model, batch)
    head = tiny_model.lm_head
    words = phrase_token_ids(batch.labels[0], groups[0], filler_token_ids(tiny_model.tokenizer))[0]
    assert {tiny_model.tokenizer.decode([int(w)]).strip() for w in words} == {"red", "circle"}
    hidden = torch.zeros(1, batch.input_ids.shape[1], head.weight.shape[1], requires_grad=True)
    loss = region_word_loss(hidden, batch, groups, tiny_model.config.image_token_id, head, torch.nn.Identity())
    # zero states: uniform logits (bias-free head), so the soft-target CE is log(vocab)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(float(head.weight.shape[0]))).item(), rel=1e-5)
    loss.backward()
    image = batch.input_ids[0] == tiny_model.config.image_token_id
    grad_rows = hidden.grad[0].abs().sum(-1) > 0
    num_tokens = int(image.sum())
    grid = int(num_tokens ** 0.5)
    covered = torch.zeros(grid, grid, dtype=torch.bool)
    covered[: grid // 2, : grid // 2] = True
    assert grad_rows[image].tolist() == covered.flatten().tolist()  # only tokens under the mask
    assert not grad_rows[~image].any()


def test_region_loss_without_targets_is_zero_and_still_runs_norm_and_head(tiny_model):
    """A batch with no covered token must run the same modules as one with targets (DeepSpeed
    reduces, and ZeRO-3 gathers, the same parameters on every rank)."""
    batch = _toy_batch(tiny_model, ["There is no such object."])
    hidden = torch.zeros(1, batch.input_ids.shape[1], tiny_model.lm_head.weight.shape[1])
    calls = []
    norm = torch.nn.Identity()
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(m)) for m in (norm, tiny_model.lm_head)]
    try:
        out = region_word_loss(hidden, batch, _groups(tiny_model, batch), tiny_model.config.image_token_id,
                               tiny_model.lm_head, norm)
    finally:
        for h in hooks:
            h.remove()
    assert out.item() == 0.0 and out.requires_grad
    assert calls == [norm, tiny_model.lm_head]


@pytest.mark.parametrize("layer", [1, -1])
def test_compute_losses_adds_the_weighted_region_loss(tiny_model, layer):
    batch = _toy_batch(tiny_model, ["The red circle <seg>.", "There is no such object."])
    out = tiny_model(batch, output_layer_states=True)
    off = compute_losses(tiny_model, out, batch, LossWeights())
    on = compute_losses(tiny_model, out, batch, LossWeights(region_words=0.5, region_words_layer=layer))
    assert off.region is None and "region" not in off.as_floats()
    assert on.region.item() > 0
    assert on.total.item() == pytest.approx(off.total.item() + 0.5 * on.region.item(), rel=1e-5)


def test_region_loss_needs_the_layer_states(tiny_model):
    batch = _toy_batch(tiny_model, ["The red circle <seg>."])
    with pytest.raises(ValueError, match="output_layer_states"):
        compute_losses(tiny_model, tiny_model(batch), batch, LossWeights(region_words=1.0))


def _groups(model, batch):
    from pixellm.modeling.codebook import find_codebook_groups

    return [find_codebook_groups(row, model.config.seg_token_ids) for row in batch.input_ids]


def test_region_loss_layer_out_of_range_is_an_error(tiny_model):
    batch = _toy_batch(tiny_model, ["The red circle <seg>."])
    out = tiny_model(batch, output_layer_states=True)
    with pytest.raises(ValueError, match="region_words_layer=99"):
        compute_losses(tiny_model, out, batch, LossWeights(region_words=1.0, region_words_layer=99))
