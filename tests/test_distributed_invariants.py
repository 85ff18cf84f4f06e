"""What multi-GPU training relies on, checked in one process: the graph of a micro-batch never
depends on what it holds, the optimizer needs no compiler, per-rank random streams, inference
precision and attention kernel selection."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny, make_batch

from pixellm.config import LossWeights, TrainConfig

SEG = "<seg>"
BATCHES = {
    "many targets": [f"red {SEG}, blue {SEG} and green {SEG}.", f"the circle {SEG}."],
    "no target": ["There is no such object.", "Nothing here."],
    "text only": ["A laptop and a cup.", "Yes."],
}


def run_modules(model, answers, weights):
    """Forward + backward of one micro-batch: the modules run, in order, and the trainable
    parameters that received a gradient."""
    model.zero_grad(set_to_none=True)
    order = []
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: order.append(name)) for name, m in model.named_modules()]
    try:
        batch = make_batch(model, answers)
        model(batch, loss_weights=weights).loss.total.backward()
    finally:
        for h in hooks:
            h.remove()
    with_grad = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return order, with_grad


@pytest.mark.parametrize("weights", [LossWeights(), LossWeights(region_words=1.0, region_words_layer=1)],
                         ids=["default losses", "region-word loss"])
def test_every_micro_batch_runs_the_same_modules_and_reaches_every_trainable_parameter(weights):
    """DeepSpeed reduces the gradients of all trainable parameters on every rank, and ZeRO-3
    gathers parameters module by module as they run: a text-only micro-batch on one rank and a
    many-target one on another must run the same modules in the same order and give every
    trainable parameter a gradient (zero where nothing depends on it)."""
    model = build_tiny(seed=3).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    runs = {kind: run_modules(model, answers, weights) for kind, answers in BATCHES.items()}
    orders = {kind: order for kind, (order, _) in runs.items()}
    assert orders["no target"] == orders["many targets"] == orders["text only"]
    for kind, (_, with_grad) in runs.items():
        assert with_grad == trainable, f"{kind}: no gradient for {sorted(trainable - with_grad)[:4]}"


def test_a_batch_without_targets_gives_no_masks_and_zero_mask_losses():
    model = build_tiny(seed=3).eval()
    batch = make_batch(model, BATCHES["text only"])
    with torch.no_grad():
        out = model(batch, loss_weights=LossWeights())
    assert [m.shape[0] for m in out.mask_logits] == [0, 0]  # the placeholder query's mask is dropped
    assert out.anchor.item() == 0.0 and out.loss.num_masks == 0
    assert out.loss.bce.item() == 0.0 and out.loss.dice.item() == 0.0


# ---------------------------------------------------------------- optimizer without a compiler


def _filled(device: str, *, optimizer: str = "torch", offload: bool = False) -> dict:
    from pixellm.training.ds_config import fill_deepspeed_config

    template = {"optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": 1e-8,
                                                          "weight_decay": "auto"}}, "bf16": {"enabled": "auto"}}
    if offload:
        template["zero_optimization"] = {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    return fill_deepspeed_config(template, TrainConfig(optimizer=optimizer), world_size=8, device=torch.device(device))


def test_the_filled_config_selects_torch_adamw_unless_the_compiled_one_is_asked_for():
    """DeepSpeed's "AdamW" is FusedAdam on GPU and DeepSpeedCPUAdam with offload, both compiled
    on first use (nvcc / a C++ toolchain). By default torch's AdamW is used instead: its fused
    CUDA kernel when the states live on the GPU, the default kernel when they are offloaded."""
    cuda = _filled("cuda")["optimizer"]["params"]
    assert cuda["torch_adam"] is True and cuda["fused"] is True
    offload = _filled("cuda", offload=True)["optimizer"]["params"]
    assert offload["torch_adam"] is True and "fused" not in offload
    cpu = _filled("cpu")["optimizer"]["params"]
    assert cpu["torch_adam"] is True and "fused" not in cpu
    compiled = _filled("cuda", optimizer="deepspeed")["optimizer"]["params"]
    assert "torch_adam" not in compiled and "fused" not in compiled


def test_torch_optimizer_with_a_non_adam_deepspeed_optimizer_is_a_config_error():
    from pixellm.config import ConfigError
    from pixellm.training.ds_config import fill_deepspeed_config

    with pytest.raises(ConfigError, match="train.optimizer=torch needs an Adam"):
        fill_deepspeed_config({"optimizer": {"type": "Lamb", "params": {}}}, TrainConfig(), world_size=1,
                              device=torch.device("cpu"))


def test_torch_adamw_through_deepspeed_builds_the_torch_optimizer(tmp_path, monkeypatch):
    """What DeepSpeed builds from the filled config (one process, ZeRO-2, CPU)."""
    import deepspeed

    from pixellm.training.distributed import init_distributed
    from pixellm.training.ds_config import fill_deepspeed_config

    init_distributed()
    template = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                "train_batch_size": "auto", "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
                "zero_optimization": {"stage": 2}}
    cfg = fill_deepspeed_config(template, TrainConfig(batch_size=1), world_size=1, device=torch.device("cpu"))
    layer = torch.nn.Linear(4, 4)
    engine, optimizer, *_ = deepspeed.initialize(model=layer, model_parameters=list(layer.parameters()), config=cfg)
    assert type(engine.basic_optimizer) is torch.optim.AdamW


# ---------------------------------------------------------------- seeds


def test_every_rank_builds_the_same_weights_and_drops_different_units():
    from pixellm.training.setup import seed_everything, seed_rank_streams

    weights, masks = [], []
    for rank in (0, 1):
        seed_everything(5)
        weights.append(torch.nn.Linear(8, 8).weight.detach().clone())
        seed_rank_streams(5, rank)
        masks.append(torch.nn.functional.dropout(torch.ones(1000), 0.5))
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(masks[0], masks[1])
    seed_rank_streams(5, 0)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(1000), 0.5), masks[0])  # reproducible


# ---------------------------------------------------------------- inference precision


@pytest.mark.parametrize("device,bf16_ok,flash,expected_dtype,expected_attn", [
    ("cpu", False, False, torch.float32, "sdpa"),
    ("cpu", False, True, torch.float32, "sdpa"),
    ("cuda", True, False, torch.bfloat16, "sdpa"),
    ("cuda", True, True, torch.bfloat16, "flash_attention_2"),
    ("cuda", False, False, torch.float16, "sdpa"),
    ("cuda", False, True, torch.float16, "flash_attention_2"),
])
def test_auto_dtype_and_attention(monkeypatch, device, bf16_ok, flash, expected_dtype, expected_attn):
    """auto: bf16 on CUDA GPUs that support it, else fp16 on CUDA, fp32 on CPU; flash-attention
    2 only where it is installed, on CUDA, in half precision (it rejects fp32)."""
    import pixellm.build as build
    from pixellm.precision import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    monkeypatch.setattr(build, "is_flash_attn_2_available", lambda: flash)
    dtype = resolve_dtype("auto", device)
    assert dtype == expected_dtype
    assert build.resolve_attn_implementation("auto", device, dtype) == expected_attn
    assert build.resolve_attn_implementation("auto", device, torch.float32) == "sdpa"  # fp32: never flash
    assert build.resolve_attn_implementation("eager", device, dtype) == "eager"  # an explicit choice wins


def test_explicit_dtypes_and_a_bad_name():
    from pixellm.precision import resolve_dtype

    assert [resolve_dtype(n, "cpu") for n in ("bf16", "fp16", "fp32")] == [torch.bfloat16, torch.float16, torch.float32]
    with pytest.raises(ValueError, match="not one of"):
        resolve_dtype("float8", "cpu")


def test_predictor_and_evaluate_load_in_the_requested_dtype(tmp_path):
    from pixellm.evaluation.loading import load_model
    from pixellm.predictor import PixelLMPredictor

    build_tiny(seed=1).eval().save_pretrained(tmp_path / "m")
    assert next(PixelLMPredictor.from_pretrained(tmp_path / "m").model.parameters()).dtype == torch.float32  # auto, CPU
    assert next(PixelLMPredictor.from_pretrained(tmp_path / "m", dtype="bf16").model.parameters()).dtype == torch.bfloat16
    model, _ = load_model(tmp_path / "m", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_training_precision_bf16_reads_the_checkpoint_in_bf16(tmp_path, monkeypatch):
    """train.precision=bf16: from_pretrained is asked for bf16 (no fp32 copy of the checkpoint
    first), and the built model is bf16 before DeepSpeed starts."""
    from conftest import tiny_model_config
    from transformers import LlavaForConditionalGeneration

    from pixellm.build import random_tiny_llava
    from pixellm.config import Config
    from pixellm.tokenization import build_tiny_tokenizer
    from pixellm.training.distributed import DistInfo
    from pixellm.training.ds_config import fill_deepspeed_config
    from pixellm.training.setup import build_model

    tok = build_tiny_tokenizer()
    random_tiny_llava(tiny_model_config(), tok).save_pretrained(tmp_path / "llava")
    tok.save_pretrained(tmp_path / "llava")
    asked = []
    original = LlavaForConditionalGeneration.from_pretrained.__func__
    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained",
                        classmethod(lambda cls, *a, **k: asked.append(k["dtype"]) or original(cls, *a, **k)))
    cfg = Config(model=tiny_model_config(llava_path=str(tmp_path / "llava")), train=TrainConfig(precision="bf16"))
    cpu = torch.device("cpu")
    ds_cfg = fill_deepspeed_config({"bf16": {"enabled": "auto"}}, cfg.train, world_size=1, device=cpu)
    model = build_model(cfg, DistInfo(0, 0, 1, cpu), ds_cfg)
    assert asked == [torch.bfloat16]
    assert {p.dtype for p in model.language_model.parameters()} == {torch.bfloat16}
