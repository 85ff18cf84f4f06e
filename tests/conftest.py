"""Shared fixtures: a tiny random PixelLM built in memory (no network), and batch builders."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pixellm.config import DecoderSettings, ModelConfig  # noqa: E402
from pixellm.data.batch import Batch, ImageMeta  # noqa: E402
from pixellm.processor import PixelLMProcessor  # noqa: E402


def tiny_model_config(**overrides) -> ModelConfig:
    """The tiny preset with a narrow decoder: a forward pass takes milliseconds."""
    values = dict(
        preset="tiny", decoder_layers=[-2, 1], image_size=64,
        decoder=DecoderSettings(dim=64, depth=2, heads=4, mlp_dim=128),
    )
    values.update(overrides)
    return ModelConfig(**values)


def build_tiny(seed: int = 0, **overrides):
    from pixellm.build import build_pixellm

    torch.manual_seed(seed)
    return build_pixellm(tiny_model_config(**overrides))


@pytest.fixture(scope="session")
def tiny_model():
    model = build_tiny()
    model.eval()
    return model


def make_batch(model, answers: list[str], *, image_sizes=None, with_masks: bool = True, seed: int = 0) -> Batch:
    """One row per answer (each with its own image); `<seg>` marks a target. Masks are random."""
    g = torch.Generator().manual_seed(seed)
    proc = PixelLMProcessor.from_model(model, max_length=4096)
    image_sizes = image_sizes or [(48, 64)] * len(answers)
    ids, labels, metas, masks = [], [], [], []
    for answer, (h, w) in zip(answers, image_sizes):
        enc = proc.encode("Segment the shapes.", answer)
        ids.append(enc.input_ids)
        labels.append(enc.labels)
        r = model.config.image_size
        scale = r / max(h, w)
        metas.append(ImageMeta((h, w), (round(h * scale), round(w * scale))))
        masks.append(torch.rand(enc.kept_targets, h, w, generator=g) > 0.5)
    length = max(len(i) for i in ids)
    pad = model.tokenizer.pad_token_id
    input_ids = torch.full((len(ids), length), pad)
    lab = torch.full((len(ids), length), -100)
    att = torch.zeros((len(ids), length), dtype=torch.long)
    for b, (i, lb) in enumerate(zip(ids, labels)):
        input_ids[b, : len(i)], lab[b, : len(i)], att[b, : len(i)] = i, lb, 1
    r = model.config.image_size
    return Batch(
        input_ids=input_ids, attention_mask=att, labels=lab,
        pixel_values=torch.randn(len(ids), 3, r, r, generator=g), image_index=torch.arange(len(ids)),
        image_meta=metas, masks=masks if with_masks else None,
    )
