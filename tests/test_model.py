import pytest
import torch
from conftest import build_tiny, make_batch, tiny_model_config

from pixellm.build import build_pixellm, lora_target_regex, resolve_attn_implementation
from pixellm.config import LossWeights
from pixellm.losses import compute_losses
from pixellm.modeling.codebook import CodebookGroupError
from pixellm.modeling.pixellm import InputMismatchError, PixelLM

SEG = "<seg>"


def test_forward_gives_one_mask_per_codebook_group(tiny_model):
    batch = make_batch(tiny_model, [f"red {SEG} and blue {SEG}.", f"the circle {SEG}.", "none here."])
    with torch.no_grad():
        out = tiny_model(batch)
    b, s = batch.input_ids.shape
    assert out.hidden_states.shape == (b, s, tiny_model.config.llava["text_config"]["hidden_size"])
    quarter = tiny_model.config.image_size // 4
    assert [tuple(m.shape) for m in out.mask_logits] == [(2, quarter, quarter), (1, quarter, quarter), (0, quarter, quarter)]
    full = tiny_model.postprocess_masks(out.mask_logits[0], batch.image_meta[0])
    assert full.shape == (2, 48, 64)  # original image size


def test_backward_reaches_every_trainable_parameter():
    model = build_tiny()
    batch = make_batch(model, [f"red {SEG} and blue {SEG}.", f"the circle {SEG}."])
    loss = compute_losses(model, model(batch), batch, LossWeights())
    loss.total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    # LoRA B starts at zero, so LoRA A gets exactly zero gradient on the first step; B gets some
    missing = [n for n in missing if "lora_A" not in n]
    assert missing == []
    assert torch.isfinite(loss.total)


def test_trainable_parameter_set_is_exact():
    model = build_tiny()
    s = model.config.settings
    n_layers = model.config.llava["text_config"]["num_hidden_layers"]
    expected = set()
    for i in range(n_layers):
        for name in s.lora.target_modules:
            block = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            for ab in ("lora_A", "lora_B"):
                expected.add(f"llava.model.language_model.layers.{i}.{block}.{name}.{ab}.default.weight")
    expected.add("llava.model.language_model.embed_tokens.token_adapter.trainable_tokens_delta.default")
    expected.add("llava.lm_head.token_adapter.trainable_tokens_delta.default")
    expected |= {f"codebook.{n}" for n, _ in model.codebook.named_parameters()}
    expected |= {f"decoder.{n}" for n, _ in model.decoder.named_parameters()}
    if s.train_vision:
        expected |= {f"llava.model.vision_tower.{n}" for n, _ in model.vision_tower.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    # the token deltas cover exactly the codebook rows
    delta = model.language_model.embed_tokens.token_adapter
    assert list(delta.token_indices["default"]) == model.config.seg_token_ids


def test_vision_tower_trains_only_when_asked():
    model = build_tiny(train_vision=True)
    assert all(p.requires_grad for p in model.vision_tower.parameters())
    assert not any(p.requires_grad for p in model.projector.parameters())


def test_lora_never_targets_clip_or_projector():
    import re

    pattern = re.compile(lora_target_regex(["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "linear_1"]))
    model = build_tiny()
    for name, _ in model.llava.named_modules():
        if pattern.fullmatch(name):
            assert name.startswith("model.language_model.layers."), name


def test_image_token_count_mismatch_is_a_clear_error(tiny_model):
    batch = make_batch(tiny_model, [f"red {SEG}."])
    row = batch.input_ids[0]
    first = int((row == tiny_model.config.image_token_id).nonzero()[0])
    row[first] = tiny_model.tokenizer.pad_token_id  # one image token short
    with pytest.raises(InputMismatchError, match=r"row 0 has \d+ image tokens but each image gives"):
        tiny_model(batch)


def test_masks_vs_groups_mismatch_is_a_clear_error(tiny_model):
    batch = make_batch(tiny_model, [f"red {SEG} and blue {SEG}."])
    batch.masks = [batch.masks[0][:1]]
    with pytest.raises(InputMismatchError, match="row 0: 2 codebook groups in the text but 1 ground-truth masks"):
        tiny_model(batch)


def test_a_broken_codebook_group_is_refused(tiny_model):
    batch = make_batch(tiny_model, [f"red {SEG}."], with_masks=False)
    ids = tiny_model.config.seg_token_ids
    row = batch.input_ids[0]
    pos = (row == ids[0]).nonzero()[0]
    row[pos], row[pos + 1] = ids[1], ids[0]  # swap [SEG0] and [SEG1]
    with pytest.raises(CodebookGroupError, match="not contiguous groups in order"):
        tiny_model(batch)


def test_save_and_load_round_trip_gives_identical_outputs(tmp_path):
    model = build_tiny(seed=3)
    with torch.no_grad():  # make adapters non-trivial so a lost LoRA weight would show
        for n, p in model.named_parameters():
            if "lora_B" in n or "trainable_tokens_delta" in n:
                p.normal_(0, 0.05)
    model.eval()
    model.save_pretrained(tmp_path / "m")
    loaded = PixelLM.from_pretrained(tmp_path / "m").eval()
    batch = make_batch(model, [f"red {SEG} and blue {SEG}."])
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    assert torch.equal(a.hidden_states, b.hidden_states)
    assert torch.equal(a.mask_logits[0], b.mask_logits[0])
    assert loaded.config.seg_token_ids == model.config.seg_token_ids
    assert loaded.config.settings == model.config.settings
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) >= ["model.safetensors", "pixellm_config.json"]


def test_llava_hf_checkpoint_loads_through_the_same_builder_path(tmp_path):
    """A llava-hf style folder (save_pretrained of LlavaForConditionalGeneration + tokenizer)
    loads through build_pixellm exactly like llava-hf/llava-1.5-7b-hf: only the path differs."""
    from pixellm.build import random_tiny_llava
    from pixellm.tokenization import build_tiny_tokenizer

    cfg = tiny_model_config()
    tok = build_tiny_tokenizer()
    torch.manual_seed(7)
    llava = random_tiny_llava(cfg, tok)
    llava.save_pretrained(tmp_path / "llava")
    tok.save_pretrained(tmp_path / "llava")
    projector = {k: v.clone() for k, v in llava.model.multi_modal_projector.state_dict().items()}
    embed = llava.get_input_embeddings().weight.detach().clone()

    model = build_pixellm(tiny_model_config(preset="pixellm-7b", llava_path=str(tmp_path / "llava")))
    for k, v in model.projector.state_dict().items():
        assert torch.equal(v, projector[k]), f"projector weight {k} changed on load"
    new = model.config.seg_token_ids
    kept = model.language_model.embed_tokens.token_adapter.base_layer.weight[: min(new)]
    assert torch.equal(kept, embed[: min(new)])
    batch = make_batch(model, [f"red {SEG}."])
    with torch.no_grad():
        assert model(batch).mask_logits[0].shape[0] == 1


def test_image_token_pooling_cuts_the_image_block():
    model = build_tiny(image_token_pool=4)
    assert model.config.num_image_tokens == 16
    batch = make_batch(model, [f"red {SEG}."])
    assert int((batch.input_ids == model.config.image_token_id).sum()) == 16
    with torch.no_grad():
        assert model(batch).mask_logits[0].shape == (1, 16, 16)


def test_other_input_size_uses_position_embedding_interpolation():
    model = build_tiny(image_size=96)  # the tiny tower is built for 64
    assert model.config.num_image_tokens == (96 // 8) ** 2
    batch = make_batch(model, [f"red {SEG}."])
    with torch.no_grad():
        assert model(batch).mask_logits[0].shape == (1, 24, 24)


def test_attention_implementation_is_sdpa_on_cpu_unless_overridden():
    assert resolve_attn_implementation("auto", "cpu") == "sdpa"
    assert resolve_attn_implementation("eager", "cpu") == "eager"


def test_vision_conv_stem_trains_saves_and_reloads(tmp_path):
    from pixellm.config import TinySizes
    from pixellm.modeling.conv_stem import ConvPatchEmbedding

    model = build_tiny(seed=5, train_vision=True, tiny=TinySizes(vision_conv_stem=True))
    embed = model.vision_tower.embeddings.patch_embedding
    assert isinstance(embed, ConvPatchEmbedding)
    assert not embed.proj.weight.any()  # starts as the plain patchify tower
    with torch.no_grad():  # a grown stem, so every stem weight is in the graph
        embed.proj.weight.normal_(0, 0.05)
    assert model.config.num_image_tokens == (64 // 8) ** 2  # the patchify grid
    batch = make_batch(model, [f"red {SEG} and blue {SEG}."])
    loss = compute_losses(model, model(batch), batch, LossWeights())
    loss.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in embed.stem.parameters())

    model.eval().save_pretrained(tmp_path / "m")
    loaded = PixelLM.from_pretrained(tmp_path / "m").eval()
    assert isinstance(loaded.vision_tower.embeddings.patch_embedding, ConvPatchEmbedding)
    with torch.no_grad():
        assert torch.equal(model(batch).mask_logits[0], loaded(batch).mask_logits[0])


def test_conv_patch_embedding_needs_a_power_of_two_patch():
    from pixellm.modeling.conv_stem import ConvPatchEmbedding

    assert ConvPatchEmbedding(32, 8)(torch.zeros(2, 3, 64, 64)).shape == (2, 32, 8, 8)
    with pytest.raises(ValueError, match="power-of-two patch size, got 14"):
        ConvPatchEmbedding(32, 14)


def test_codebook_states_take_the_predicting_states_plus_the_window_mean():
    from pixellm.modeling.pixellm import codebook_states

    hidden = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 2)  # state p = (p, p)
    groups = torch.tensor([[4, 5], [8, 9]])  # two groups of K=2
    plain = codebook_states(hidden, groups, window=1)
    assert plain[:, :, 0].tolist() == [[3, 4], [7, 8]]
    wide = codebook_states(hidden, groups, window=3)
    assert wide[:, :, 0].tolist() == [[3 + 2, 4 + 2], [7 + 6, 8 + 6]]  # + mean of states 1-3 / 5-7
    assert codebook_states(hidden, groups[:0], window=3).shape == (0, 2, 2)


def test_codebook_fusion_starts_as_the_mean_and_leaves_the_random_stream_as_nn_linear_does():
    """The start is set inside the layer's own constructor (it must hold under zero.Init, which
    partitions each layer as it is built), and the default draws still happen, so the modules
    built after it get the same initial weights as before."""
    from pixellm.modeling.codebook import MeanFusion

    torch.manual_seed(0)
    fuse = MeanFusion(3 * 4, 4)
    after_fusion = torch.rand(3)
    torch.manual_seed(0)
    torch.nn.Linear(3 * 4, 4)
    assert torch.equal(after_fusion, torch.rand(3))
    states = torch.randn(2, 3, 4)
    assert torch.allclose(fuse(states.flatten(1)), states.mean(1), atol=1e-6)
