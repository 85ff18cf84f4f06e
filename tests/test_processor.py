"""PixelLMProcessor: label masking, `<image>` expansion, codebook groups, truncation, image
transform, size checks, and collate (shared images, padding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixellm.constants import CLIP_MEAN, CLIP_STD, IGNORE_INDEX, NO_TARGET_ANSWER, SEG_PLACEHOLDER
from pixellm.data.batch import collate
from pixellm.data.errors import DataError
from pixellm.data.masks import encode_rle
from pixellm.data.records import QARecord
from pixellm.modeling.codebook import find_codebook_groups
from pixellm.processor import PixelLMProcessor, SampleTooLongError

QUESTION = "Segment the red circle, the blue square and the green triangle."
ANSWER3 = "The red circle <seg>, the blue square <seg> and the green triangle <seg>."


@pytest.fixture(scope="module")
def proc(tiny_model):
    return PixelLMProcessor.from_model(tiny_model, max_length=4096)


def with_max_length(proc, n):
    return PixelLMProcessor(tokenizer=proc.tokenizer, config=proc.config, max_length=n)


def count_groups(ids: torch.Tensor, seg_ids: list[int]) -> int:
    """Number of complete codebook groups; fails if any codebook token sits outside a full group."""
    ids = ids.tolist()
    k = len(seg_ids)
    groups, i = 0, 0
    while i < len(ids):
        if ids[i] in seg_ids:
            assert ids[i : i + k] == seg_ids, f"broken codebook group at {i}: {ids[i:i + k]}"
            groups += 1
            i += k
        else:
            i += 1
    return groups


def write_image(path, h, w, colour=(200, 40, 90)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path)
    return path


def rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def record(image_path, *, h, w, qid="q0", answer=ANSWER3, masks=None, size=None):
    if masks is None:
        masks = [encode_rle(rect(h, w, i, i + 2, i, i + 3)) for i in range(answer.count(SEG_PLACEHOLDER))]
    height, width = size or (h, w)
    return QARecord(source="test", image_path=image_path, image_id=1, question_id=qid, question=QUESTION,
                    answer=answer, masks=masks, height=height, width=width)


# ----------------------------------------------------------------------------- tokens


def test_labels_mask_bos_prompt_and_image_and_keep_answer(proc):
    tok, cfg = proc.tokenizer, proc.config
    enc = proc.encode(QUESTION, ANSWER3)
    prompt = proc.prompt_ids(QUESTION)
    n = len(prompt)
    assert enc.input_ids.dtype == torch.long and enc.labels.shape == enc.input_ids.shape
    assert enc.input_ids[:n].tolist() == prompt
    if tok.bos_token_id is not None:
        assert enc.input_ids[0] == tok.bos_token_id
    # BOS, prompt text and every image token are ignored ...
    assert (enc.labels[:n] == IGNORE_INDEX).all()
    assert (enc.labels[enc.input_ids == cfg.image_token_id] == IGNORE_INDEX).all()
    # ... the answer is labelled with its own ids, except the group tokens that generation
    # forces after [SEG0] ([SEG1]..[SEG5]): those carry no text loss
    forced = torch.isin(enc.input_ids, torch.tensor(cfg.seg_token_ids[1:]))
    assert torch.equal(enc.labels[n:][~forced[n:]], enc.input_ids[n:][~forced[n:]])
    assert (enc.labels[forced] == IGNORE_INDEX).all() and forced.sum() == 3 * (cfg.group_size - 1)
    assert (enc.labels[n:][~forced[n:]] != IGNORE_INDEX).all()
    assert enc.input_ids[-1] == tok.eos_token_id and enc.labels[-1] == tok.eos_token_id
    seg0 = enc.input_ids == cfg.seg_token_ids[0]
    assert (enc.labels[seg0] == enc.input_ids[seg0]).all() and seg0.sum() == 3
    assert enc.kept_targets == 3


def test_image_token_expanded_to_num_image_tokens(proc):
    cfg = proc.config
    for question in ("Where?", QUESTION):
        ids = torch.tensor(proc.prompt_ids(question))
        is_image = ids == cfg.image_token_id
        assert int(is_image.sum()) == cfg.num_image_tokens
        pos = is_image.nonzero().flatten()
        assert (pos[1:] - pos[:-1] == 1).all()  # one contiguous block
        # the `<image>` string itself never survives as text
        assert "<image>" not in proc.tokenizer.decode(ids[~is_image].tolist())
    assert int((proc.encode_prompt(QUESTION) == cfg.image_token_id).sum()) == cfg.num_image_tokens


def test_question_first_puts_the_image_block_after_the_question(proc, tmp_path):
    from conftest import build_tiny

    from pixellm.modeling.pixellm import PixelLM

    model = build_tiny(question_first=True, system_prompt="")
    model.save_pretrained(tmp_path)  # the layout is part of the saved model: eval/inference follow it
    qf = PixelLMProcessor.from_model(PixelLM.from_pretrained(tmp_path))
    assert qf.config.template.question_first
    ids = qf.prompt_ids(QUESTION)
    is_image = [i == qf.config.image_token_id for i in ids]
    start = is_image.index(True)
    assert sum(is_image) == qf.config.num_image_tokens and all(is_image[start : start + sum(is_image)])
    before = qf.tokenizer.decode(ids[:start])
    after = qf.tokenizer.decode(ids[start + sum(is_image):])
    assert QUESTION in before and "ASSISTANT:" in after and QUESTION not in after
    ids = proc.prompt_ids(QUESTION)  # the default: LLaVA-1.5's order, image then question
    last_image = max(i for i, t in enumerate(ids) if t == proc.config.image_token_id)
    assert QUESTION in proc.tokenizer.decode(ids[last_image + 1:])


@pytest.mark.parametrize("answer, targets", [
    (ANSWER3, 3), ("It is <seg>.", 1), ("<seg><seg>", 2), ("A <seg>, b <seg>, c <seg> and d <seg>.", 4),
    (NO_TARGET_ANSWER, 0),
])
def test_every_seg_becomes_the_full_codebook_group(proc, answer, targets):
    cfg = proc.config
    ids = torch.tensor(proc.answer_ids(answer))
    assert count_groups(ids, cfg.seg_token_ids) == targets
    assert int(torch.isin(ids, torch.tensor(cfg.seg_token_ids)).sum()) == targets * cfg.group_size
    assert find_codebook_groups(ids, cfg.seg_token_ids).shape == (targets, cfg.group_size)
    assert SEG_PLACEHOLDER not in proc.tokenizer.decode(ids.tolist())
    enc = proc.encode(QUESTION, answer)
    assert count_groups(enc.input_ids, cfg.seg_token_ids) == enc.kept_targets == targets


# ----------------------------------------------------------------------------- truncation


def test_truncation_never_cuts_a_codebook_group(proc, tmp_path):
    cfg, eos = proc.config, proc.tokenizer.eos_token_id
    prompt = len(proc.prompt_ids(QUESTION))
    full = [len(proc.answer_ids(ANSWER3, keep_targets=k)) for k in range(4)]
    assert full[1] < full[2] < full[3]
    for budget_extra in range(full[1], full[3] + 2):
        small = with_max_length(proc, prompt + budget_extra)
        enc = small.encode(QUESTION, ANSWER3)
        kept = max(k for k in (1, 2, 3) if full[k] <= budget_extra)
        assert enc.kept_targets == kept
        assert enc.input_ids.numel() <= small.max_length
        assert count_groups(enc.input_ids, cfg.seg_token_ids) == kept
        if kept < 3:
            # the text after the last kept group is cut, and no stop signal is trained: the
            # answer ends with the group, without EOS
            assert enc.input_ids[-cfg.group_size:].tolist() == cfg.seg_token_ids
            assert eos not in enc.input_ids[prompt:].tolist() and eos not in enc.labels.tolist()
            assert "green triangle" not in small.tokenizer.decode(enc.input_ids[prompt:].tolist())
        else:
            assert enc.input_ids[-1] == eos and enc.labels[-1] == eos
        assert (enc.labels[:prompt] == IGNORE_INDEX).all()
        assert torch.equal(enc.labels[prompt:], small.mask_forced_tokens(enc.input_ids[prompt:]))

    # the Sample keeps exactly one mask per kept group, and counts the dropped targets
    h, w = 10, 14
    path = write_image(tmp_path / "img.png", h, w)
    rec = record(path, h=h, w=w)
    small = with_max_length(proc, prompt + full[2])
    sample = small(rec)
    assert count_groups(sample.input_ids, cfg.seg_token_ids) == 2
    assert sample.masks.shape == (2, h, w) and sample.masks.dtype == torch.bool
    assert sample.extra["dropped_targets"] == 1 and sample.extra["truncated"] is True
    np.testing.assert_array_equal(sample.masks[1].numpy(), rect(h, w, 1, 3, 1, 4))  # the first two, in order

    # not even one target fits
    with pytest.raises(SampleTooLongError):
        with_max_length(proc, prompt + full[1] - 1).encode(QUESTION, ANSWER3)
    with pytest.raises(SampleTooLongError):
        with_max_length(proc, prompt + full[1] - 1)(rec)
    # the prompt alone does not fit (no-target answer)
    with pytest.raises(SampleTooLongError):
        with_max_length(proc, prompt - 1).encode(QUESTION, NO_TARGET_ANSWER)
    # a no-target answer that fits is kept whole
    no_target = len(proc.answer_ids(NO_TARGET_ANSWER))
    assert with_max_length(proc, prompt + no_target).encode(QUESTION, NO_TARGET_ANSWER).kept_targets == 0
    assert issubclass(SampleTooLongError, DataError)


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("h, w", [(48, 32), (30, 60), (64, 64), (100, 37), (7, 200)])
def test_image_transform_resize_pad_and_valid_size(proc, h, w):
    r = proc.image_size
    colour = (200, 40, 90)
    x, meta = proc.preprocess_image(Image.new("RGB", (w, h), colour))
    assert x.shape == (3, r, r) and x.dtype == torch.float32
    assert meta.original_size == (h, w)
    scale = r / max(h, w)
    vh, vw = meta.valid_size
    assert (vh, vw) == (max(1, round(h * scale)), max(1, round(w * scale)))
    assert max(vh, vw) == r  # longest side resized to R
    # padding is bottom/right and exactly zero
    assert (x[:, vh:, :] == 0).all() and (x[:, :, vw:] == 0).all()
    # the valid area is the normalised image (a uniform colour stays uniform)
    expected = (torch.tensor(colour) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[:, :vh, :vw], expected.view(3, 1, 1).expand(3, vh, vw), atol=1e-4, rtol=0)


def test_portrait_and_landscape_valid_sizes(proc):
    r = proc.image_size
    assert r == 64
    _, portrait = proc.preprocess_image(Image.new("RGB", (32, 48)))
    _, landscape = proc.preprocess_image(Image.new("RGB", (60, 30)))
    assert portrait.valid_size == (64, 43) and portrait.original_size == (48, 32)
    assert landscape.valid_size == (32, 64) and landscape.original_size == (30, 60)


def test_sample_keeps_masks_at_original_size(proc, tmp_path):
    h, w = 37, 90
    path = write_image(tmp_path / "wide.jpg", h, w)
    poly = [[2, 2, 20, 2, 20, 10, 2, 10]]
    png = np.zeros((h, w), np.uint8)
    png[20:, 50:] = 255
    Image.fromarray(png).save(tmp_path / "m.png")
    rec = QARecord(source="t", image_path=path, image_id=3, question_id="7:1", question="q",
                   answer="A <seg> and b <seg>.", masks=[poly, "m.png"], height=h, width=w, mask_root=tmp_path)
    s = proc(rec)
    assert s.pixel_values.shape == (3, proc.image_size, proc.image_size)
    assert s.image_meta.original_size == (h, w) and s.image_meta.valid_size == (26, 64)
    assert s.masks.shape == (2, h, w) and s.masks.dtype == torch.bool
    np.testing.assert_array_equal(s.masks[1].numpy(), png > 0)
    assert s.masks[0, 5, 10] and not s.masks[0, 20, 40]
    assert s.image_key == str(path) and s.question_id == "7:1" and s.extra["dropped_targets"] == 0

    no_target = proc(QARecord(source="t", image_path=path, image_id=3, question_id="7:2", question="q",
                              answer=NO_TARGET_ANSWER, height=h, width=w))
    assert no_target.masks.shape == (0, h, w)


def test_annotation_size_mismatch_names_file_and_question(proc, tmp_path):
    path = write_image(tmp_path / "sub" / "a.png", 20, 30)
    rec = record(path, h=20, w=30, qid="12:3", size=(30, 20))
    with pytest.raises(DataError) as err:
        proc(rec)
    msg = str(err.value)
    assert str(path) in msg and "question 12:3" in msg and "30x20" in msg and "20x30" in msg
    assert err.value.problem is not None and err.value.problem.file == str(path)


def test_missing_image_is_a_data_error(proc, tmp_path):
    with pytest.raises(DataError, match=r"missing\.png.*question q9.*image .*missing\.png not found"):
        proc(record(tmp_path / "missing.png", h=4, w=4, qid="q9"))


# ----------------------------------------------------------------------------- collate


def test_collate_shares_images_and_pads(proc, tmp_path):
    tok = proc.tokenizer
    a = write_image(tmp_path / "a.png", 20, 30, (10, 200, 10))
    b = write_image(tmp_path / "b.png", 40, 16, (250, 250, 0))
    samples = [
        proc(record(a, h=20, w=30, qid="a0")),
        proc(record(b, h=40, w=16, qid="b0", answer="It is <seg>.")),
        proc(record(a, h=20, w=30, qid="a1", answer=NO_TARGET_ANSWER, masks=[])),
        proc(record(b, h=40, w=16, qid="b1", answer="Two <seg> <seg>.")),
    ]
    batch = collate(samples, pad_id=tok.pad_token_id)
    r = proc.image_size
    assert batch.num_rows == 4
    assert batch.pixel_values.shape == (2, 3, r, r)  # two distinct images for four rows
    assert batch.image_index.tolist() == [0, 1, 0, 1]
    assert torch.equal(batch.pixel_values[0], samples[0].pixel_values)
    assert torch.equal(batch.pixel_values[1], samples[1].pixel_values)
    assert batch.image_meta == [samples[0].image_meta, samples[1].image_meta]
    lengths = [s.input_ids.numel() for s in samples]
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (4, max(lengths))
    assert len(set(lengths)) > 1
    for i, (s, n) in enumerate(zip(samples, lengths, strict=True)):
        assert torch.equal(batch.input_ids[i, :n], s.input_ids)
        assert torch.equal(batch.labels[i, :n], s.labels)
        assert (batch.attention_mask[i, :n] == 1).all()
        assert (batch.input_ids[i, n:] == tok.pad_token_id).all()
        assert (batch.labels[i, n:] == IGNORE_INDEX).all()
        assert (batch.attention_mask[i, n:] == 0).all()
        assert torch.equal(batch.masks[i], s.masks)
    assert [m.shape[0] for m in batch.masks] == [3, 1, 0, 2]
    assert [r.question_id for r in batch.rows] == [s.question_id for s in samples]
    with pytest.raises(ValueError):
        collate([], pad_id=0)


def test_collated_batch_runs_through_the_model(tiny_model, proc, tmp_path):
    """The processor's output is what the model expects (image tokens, groups vs masks)."""
    a = write_image(tmp_path / "a.png", 20, 30)
    samples = [proc(record(a, h=20, w=30, qid="a0")), proc(record(a, h=20, w=30, qid="a1", answer="It <seg>."))]
    batch = collate(samples, pad_id=proc.tokenizer.pad_token_id)
    with torch.no_grad():
        out = tiny_model(batch)
    assert [m.shape[0] for m in out.mask_logits] == [3, 1]


def test_a_too_long_text_only_answer_is_cut_at_the_budget_without_eos(proc):
    """A long VQA description has no codebook group to keep whole: it is cut where the budget
    ends (as LLaVA does), not skipped, and the cut answer trains no stop signal."""
    eos = proc.tokenizer.eos_token_id
    long_answer = " ".join(["the red circle and the blue square"] * 40)
    prompt = len(proc.prompt_ids(QUESTION))
    small = with_max_length(proc, prompt + 12)
    enc = small.encode(QUESTION, long_answer)
    assert enc.input_ids.numel() == small.max_length and enc.truncated and enc.kept_targets == 0
    assert eos not in enc.input_ids.tolist() and (enc.labels[prompt:] != IGNORE_INDEX).all()
    whole = proc.encode(QUESTION, "the red circle.")
    assert not whole.truncated and whole.input_ids[-1] == eos
