"""Attention-based grounding (attend-and-segment / PixFoundation): maps, normalisation, peak,
PointAcc on hand-built tensors; eager vs SDPA; `pixellm probe-grounding` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_refer import refer_root  # noqa: F401  (a fixture)

from pixellm.data.batch import ImageMeta
from pixellm.grounding.attention import (
    aggregate,
    answer_attention,
    attention_mask,
    eager_attention,
    grid_of,
    map_to_image,
    normalize,
    peak_point,
    point_in_mask,
)
from pixellm.grounding.probe import Target, locate_phrases, score_map
from pixellm.processor import PixelLMProcessor

# 2 layers, 3 answer tokens, 4 image tokens (a 2 x 2 grid)
MAPS = torch.tensor([
    [[0.10, 0.20, 0.30, 0.40], [0.30, 0.30, 0.20, 0.20], [0.20, 0.10, 0.10, 0.60]],
    [[0.00, 0.50, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25], [0.20, 0.30, 0.40, 0.10]],
])


def test_normalise_subtracts_the_answers_mean_map_per_layer():
    norm = normalize(MAPS)
    # layer 0 mean map over the 3 tokens: [0.2, 0.2, 0.2, 0.4]
    assert torch.allclose(norm[0, 0], torch.tensor([-0.1, 0.0, 0.1, 0.0]), atol=1e-6)
    assert torch.allclose(norm[0, 2], torch.tensor([0.0, -0.1, -0.1, 0.2]), atol=1e-6)
    assert torch.allclose(norm.sum(1), torch.zeros(2, 4), atol=1e-6)  # each layer's maps now cancel out
    # aggregate: layers 0 and 1, tokens 0 and 2 -> mean of 4 maps
    assert torch.allclose(aggregate(MAPS, [0, 1], [0, 2]), torch.tensor([0.125, 0.275, 0.2625, 0.3375]))
    # cell 3 draws every token's attention in layer 0 (a sink): token 0's raw peak is there,
    # its normalised peak is cell 2
    assert int(MAPS[0, 0].argmax()) == 3 and int(norm[0, 0].argmax()) == 2


def test_peak_point_follows_the_processor_geometry_and_pointacc():
    # a 200 x 100 (W x H) image resized into a 64 x 64 input: valid (32, 64), padding below
    meta = ImageMeta(original_size=(100, 200), valid_size=(32, 64))
    grid = torch.tensor([[0.0, 0.9], [0.1, 0.2]])  # peak at row 0, col 1: centre (48, 16) in the input
    assert peak_point(grid, meta, 64) == pytest.approx((150.0, 50.0))  # x * 200/64, y * 100/32
    assert peak_point(torch.tensor([[0.0, 0.1], [0.9, 0.2]]), meta, 64) is None  # the peak is in the padding
    mask = torch.zeros(100, 200, dtype=torch.bool)
    mask[:, 100:] = True
    assert point_in_mask((150.0, 50.0), mask) and not point_in_mask((20.0, 50.0), mask)
    assert not point_in_mask(None, mask)
    # PointAcc and the attention mask's IoU of one map for one target, by hand
    target = Target("right half", mask.numpy(), [0])
    hit, iou, point = score_map(grid.flatten(), target, meta, 64)
    assert hit and point == pytest.approx((150.0, 50.0))
    att = attention_mask(map_to_image(grid, meta, 64)).numpy()
    assert att.shape == (100, 200) and att[:, 150:].all() and not att[:, :60].any()
    assert iou == pytest.approx(np.logical_and(att, mask.numpy()).sum() / np.logical_or(att, mask.numpy()).sum())
    assert grid_of(torch.arange(9.0)).shape == (3, 3)


def test_attention_mask_of_a_flat_map_is_empty():
    assert not attention_mask(torch.ones(4, 5)).any()


@pytest.fixture(scope="module")
def model_and_inputs():
    from conftest import build_tiny

    model = build_tiny(seed=3).eval()
    proc = PixelLMProcessor.from_model(model)
    pixels, meta = proc.preprocess_image(Image.new("RGB", (64, 48), (200, 30, 30)))
    prompt = proc.prompt_ids("Where is the red circle?")
    answer = proc._ids(model.config.template.answer("the red circle"))
    return model, pixels[None], prompt, answer


def test_unnormalised_maps_are_the_attention_mass_on_image_tokens(model_and_inputs):
    model, pixels, prompt, answer = model_and_inputs
    att = answer_attention(model, pixels, prompt, answer)
    ids = torch.tensor([prompt + answer])
    vision = model.encode_images(pixels)
    embeds = model.embed_inputs(ids, vision.llm_tokens, torch.zeros(1, dtype=torch.long))
    with torch.no_grad(), eager_attention(model.language_model):
        out = model.language_model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), output_attentions=True)
    text = ids[0] != model.config.image_token_id
    rows = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
    for layer, a in enumerate(out.attentions):
        text_mass = a[0][:, rows][:, :, text].sum(-1).mean(0)  # heads averaged
        assert torch.allclose(att.maps[layer].sum(-1) + text_mass, torch.ones(len(answer)), atol=1e-5)
    assert att.maps.shape == (len(out.attentions), len(answer), model.config.num_image_tokens)


def test_eager_and_sdpa_give_the_same_answer(model_and_inputs):
    from pixellm.generation import GenerationConfig, generate

    model, pixels, prompt, answer = model_and_inputs
    assert model.language_model.config._attn_implementation == "sdpa"
    vision = model.encode_images(pixels)
    index = torch.zeros(1, dtype=torch.long)
    cfg = GenerationConfig(max_new_tokens=12)
    sdpa = generate(model, [torch.tensor(prompt)], vision, index, cfg)[0].token_ids
    with eager_attention(model.language_model):
        assert model.language_model.config._attn_implementation == "eager"
        eager = generate(model, [torch.tensor(prompt)], vision, index, cfg)[0].token_ids
    assert model.language_model.config._attn_implementation == "sdpa"  # restored
    assert eager == sdpa
    # and the probe's eager pass predicts the answer as the SDPA forward does
    att = answer_attention(model, pixels, prompt, answer)
    ids = torch.tensor([prompt + answer])
    embeds = model.embed_inputs(ids, vision.llm_tokens, index)
    with torch.no_grad():
        hidden = model.language_model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).last_hidden_state
    logits = model.lm_head(hidden[0, len(prompt) - 1 : -1])
    assert torch.allclose(att.logits, logits, atol=1e-4)


def test_locate_phrases_finds_each_phrases_tokens(model_and_inputs):
    model = model_and_inputs[0]
    text = " The red circle [SEG0] and the blue square."
    ids, spans = locate_phrases(model.tokenizer, text, ["red circle", "blue square", "green"])
    decoded = [model.tokenizer.decode([ids[i] for i in s]).strip() for s in spans[:2]]
    assert decoded == ["red circle", "blue square"] and spans[2] == []


def save_tiny_sam(path):
    """A random 2-layer SamModel at 256 px and its processor, saved as a user's SAM folder."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    cfg = SamConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=256, patch_size=16,
                           output_channels=32, global_attn_indexes=[1], window_size=4, mlp_dim=64, num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=256, patch_size=16),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32))
    torch.manual_seed(0)
    SamModel(cfg).save_pretrained(path)
    SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 256},
                                                   pad_size={"height": 256, "width": 256})).save_pretrained(path)


def test_sam_segments_from_a_point_at_the_image_size(tmp_path):
    from pixellm.grounding.sam import SamPointSegmenter

    save_tiny_sam(tmp_path / "sam")
    mask = SamPointSegmenter(tmp_path / "sam")(Image.new("RGB", (80, 60), (100, 20, 20)), (40.0, 30.0))
    assert mask.shape == (60, 80) and mask.dtype == bool


def test_probe_grounding_cli_writes_json_and_png_for_two_models(refer_root, tmp_path, capsys):  # noqa: F811
    from conftest import build_tiny, tiny_model_config

    from pixellm.build import random_tiny_llava
    from pixellm.cli import main
    from pixellm.tokenization import build_tiny_tokenizer

    build_tiny(seed=1).save_pretrained(tmp_path / "pixellm")
    tok = build_tiny_tokenizer()
    random_tiny_llava(tiny_model_config(), tok).save_pretrained(tmp_path / "llava")
    tok.save_pretrained(tmp_path / "llava")
    save_tiny_sam(tmp_path / "sam")
    out = tmp_path / "probe"
    rc = main(["probe-grounding", str(tmp_path / "pixellm"), str(tmp_path / "llava"), "--dataset", "refcoco:train",
               "--data-root", str(refer_root.parent), "--out", str(out), "--max-new-tokens", "6",
               "--sam", str(tmp_path / "sam"),
               "--set", "model.decoder_layers=[-2,1]", "--set", "model.image_size=64"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "grounding.json").read_text())
    pix, llava = doc["models"]["pixellm"], doc["models"]["llava"]
    for r in (pix, llava):
        assert r["num_questions"] == 4 and r["num_targets"] == 4  # 4 expressions, each located in its answer
        assert len(r["layers"]) == 2 and all(0 <= x["point_acc"] <= 1 for x in r["layers"])
        assert 0 < r["chance_point_acc"] < 1 and r["when"]["num_targets"] == 4
        assert sum(r["when"]["histogram"]["counts"]) == 4
        assert 0 <= r["sam"]["mask_iou"] <= 1
    assert pix["codebook"] and pix["decoder"]["gIoU"] is not None
    assert not llava["codebook"] and llava["decoder"] is None
    with Image.open(out / "grounding.png") as im:
        assert im.size[0] > 600


def test_grounding_demo_runs_at_tiny_size(tmp_path):
    """`make grounding-demo` at a few steps: the VQA-only LLaVA trains on text alone, both models
    are probed on val and compositional, and the summary holds both."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import build_tiny

    repo = Path(__file__).resolve().parents[1]
    build_tiny(seed=2).save_pretrained(tmp_path / "pixellm")  # stands in for the trained demo model
    out = tmp_path / "demo"
    env = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pixellm.grounding.demo", "--out", str(out), "--pixellm", str(tmp_path / "pixellm"),
         "--vqa-images", "8", "--limit-images", "2", "train.max_steps=2", "train.batch_size=4", "data.num_workers=0",
         "data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.num_compositional=2",
         "train.wandb_mode=disabled", "model.tiny.num_layers=2"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for split in ("val", "compositional"):
        assert set(summary[split]) == {"pixellm", "vqa_llava"}  # the demo PixelLM and the VQA-only LLaVA
        assert summary[split]["vqa_llava"]["decoder"] is None and summary[split]["pixellm"]["decoder"] is not None
        assert len(summary[split]["vqa_llava"]["point_acc_per_layer"]) == 2
        assert (out / split / "grounding.png").is_file()
