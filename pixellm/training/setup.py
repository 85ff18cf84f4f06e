"""Everything train.py builds before its loop: data, loader, engine (one home each)."""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..build import build_pixellm
from ..config import Config
from ..data.batch import Batch, collate
from ..data.mixture import MixtureDataset, QADataset, StepSampler
from ..data.sources import load_source, source_name
from ..modeling.pixellm import PixelLM
from ..modeling.zero3 import gathered, zero_stage
from ..processor import PixelLMProcessor
from .distributed import DistInfo
from .ds_config import load_deepspeed_config

log = logging.getLogger("pixellm.train")


def seed_everything(seed: int) -> None:
    """The same seed on every rank: every rank builds the same initial weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_rank_streams(seed: int, rank: int) -> None:
    """After the model is built: a different random stream per rank (dropout, sampling), so the
    ranks of one step do not drop the same units. Derived from (seed, rank) by NumPy's
    SeedSequence: no two (seed, rank) pairs share a stream."""
    state = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(state)
    np.random.seed(state)
    torch.manual_seed(state)


def deepspeed_config(cfg: Config, dist: DistInfo) -> dict:
    """The run's DeepSpeed config, filled from `cfg.train` (one home: build and engine share it)."""
    return load_deepspeed_config(cfg.train.deepspeed, cfg.train, world_size=dist.world_size, device=dist.device)


def build_model(cfg: Config, dist: DistInfo, ds_cfg: dict) -> PixelLM:
    """The model to train, read in the training precision (bf16 when DeepSpeed runs bf16: no
    fp32 copy of the checkpoint first) and, under ZeRO-3, partitioned over the ranks as it is
    loaded."""
    dtype = torch.bfloat16 if ds_cfg.get("bf16", {}).get("enabled") else None
    return build_pixellm(cfg.model, device=dist.device, dtype=dtype, ds_config=ds_cfg)


def build_mixture(cfg: Config, model: PixelLM) -> MixtureDataset:
    """The training mixture from `data.train`, with per-source record counts logged."""
    if not cfg.data.train:
        raise ValueError("data.train is empty: list at least one source in the config")
    proc = PixelLMProcessor.from_model(model, max_length=cfg.data.max_length)
    sets = [
        QADataset(load_source(s, cfg.data, mode="train", where=f"data.train[{i}]"), proc, source_name(s))
        for i, s in enumerate(cfg.data.train)
    ]
    mixture = MixtureDataset(sets, [s.weight for s in cfg.data.train], seed=cfg.data.seed)
    log.info("training mixture: %s", mixture.describe())
    return mixture


def make_loader(data: MixtureDataset, cfg: Config, dist: DistInfo, start_micro_step: int, pad_id: int) -> DataLoader:
    sampler = StepSampler(batch_size=cfg.train.batch_size, rank=dist.rank, world_size=dist.world_size, start_step=start_micro_step)
    workers = cfg.data.num_workers
    return DataLoader(
        data, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=partial(collate, pad_id=pad_id),
        num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
        pin_memory=dist.device.type == "cuda",
    )


def make_engine(model: PixelLM, cfg: Config, ds_cfg: dict):
    """DeepSpeed engine over the trainable parameters."""
    import deepspeed

    if cfg.train.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.language_model.enable_input_require_grads()
    if zero_stage(ds_cfg) == 3:
        register_zero3_external_params(model)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds_cfg)
    return engine


def register_zero3_external_params(model: PixelLM) -> int:
    """peft's trainable-token layers (the codebook rows of the embeddings and the LM head) use
    their base layer's weight and their delta rows without calling the modules that own them, so
    ZeRO-3 would never gather them. Registered as external parameters of the layer that uses
    them, they are gathered whenever that layer runs, forward and backward. (Marking the layer a
    ZeRO-3 "leaf" instead makes DeepSpeed reduce the embedding rows' gradient before it exists:
    the layer's input ids need no gradient, so its backward hook fires first.)
    Returns the number of layers handled."""
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    layers = [m for m in model.modules() if isinstance(m, TrainableTokensLayer)]
    for layer in layers:
        for param in [layer.base_layer.weight, *layer.trainable_tokens_delta.values()]:
            register_external_parameter(layer, param)
    return len(layers)


@dataclass
class TrainResult:
    """losses: per optimizer step (mean over micro-batches) of this process; checksum: sum of
    every trainable weight (ranks of one run must agree); grad_norms: per optimizer step, the
    norm of the gradient the optimizer used, before clipping (the same on every rank)."""

    losses: list[float]
    model: PixelLM
    checksum: float
    grad_norms: list[float | None] = field(default_factory=list)


def param_checksum(model: PixelLM) -> float:
    """Sum of every trainable weight (under ZeRO-3 gathered: call it on every rank)."""
    params = [p for p in model.parameters() if p.requires_grad]
    with gathered(params, modifier_rank=None):
        return float(sum(p.detach().double().sum() for p in params))


class StepMeter:
    """Per-step bookkeeping: mean losses over micro-batches, samples/s, source and skip counts."""

    def __init__(self) -> None:
        self.sources: Counter = Counter()
        self.skipped = 0
        self.dropped_targets = 0
        self.reset()

    def reset(self) -> None:
        self.sums: Counter = Counter()
        self.micro = 0
        self.samples = 0

    def add(self, losses: dict[str, float], batch: Batch) -> None:
        self.sums.update(losses)
        self.micro += 1
        self.samples += batch.num_rows
        for s in batch.rows or []:
            self.sources[s.extra.get("source", s.source)] += 1
            self.skipped += len(s.extra.get("skipped", []))
            self.dropped_targets += s.extra.get("dropped_targets", 0)

    def means(self) -> dict[str, float]:
        return {k: v / max(self.micro, 1) for k, v in self.sums.items()}
