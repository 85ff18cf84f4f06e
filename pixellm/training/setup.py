"""Everything train.py builds before its loop: data, loader, engine (one home each)."""

from __future__ import annotations

import logging
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..build import build_pixellm
from ..config import Config, ConfigError, TrainConfig
from ..data.batch import Batch, collate
from ..data.errors import Problem
from ..data.leaks import guard as leak_guard
from ..data.mixture import MixtureDataset, QADataset, StepSampler
from ..data.records import QARecord
from ..data.skips import SkipLog, skip_entry
from ..data.sources import load_source, source_name
from ..modeling.pixellm import PixelLM
from ..modeling.zero3 import gathered, zero_stage
from ..processor import PixelLMProcessor
from .distributed import DistInfo, barrier
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


def deepspeed_config(cfg: Config, dist: DistInfo, config_file: str | Path | None = None) -> dict:
    """The run's DeepSpeed config, filled from `cfg.train` (one home: build and engine share it);
    a relative `train.deepspeed` resolves next to `config_file` first (resolve_deepspeed_path)."""
    return load_deepspeed_config(cfg.train.deepspeed, cfg.train, world_size=dist.world_size, device=dist.device,
                                 config_file=config_file)


def build_model(cfg: Config, dist: DistInfo, ds_cfg: dict) -> PixelLM:
    """The model to train, read in the training precision (bf16 when DeepSpeed runs bf16: no
    fp32 copy of the checkpoint first) and, under ZeRO-3, partitioned over the ranks as it is
    loaded."""
    dtype = torch.bfloat16 if ds_cfg.get("bf16", {}).get("enabled") else None
    return build_pixellm(cfg.model, device=dist.device, dtype=dtype, ds_config=ds_cfg)


def check_run_folder(out: Path, train: TrainConfig) -> None:
    """Never mix two runs in one folder: a non-empty `out` needs train.resume (continue the run
    there) or train.overwrite=true (`clear_run_folder` deletes it). ConfigError otherwise."""
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if existing and train.resume is None and not train.overwrite:
        raise ConfigError(
            f"train.output_dir={out} already holds a run ({', '.join(existing[:4])}{', ...' if len(existing) > 4 else ''}): "
            "set train.resume=auto to continue it, train.overwrite=true to replace it, or choose another folder")


def clear_run_folder(out: Path, train: TrainConfig, dist: DistInfo) -> None:
    """With train.overwrite (and no resume), rank 0 deletes the old run; called once the new
    run's config and data have been checked, so a failing start leaves the old run alone."""
    barrier()  # every rank has looked at the folder before rank 0 deletes it
    if train.overwrite and train.resume is None and dist.is_main and out.is_dir():
        shutil.rmtree(out)
    barrier()


def load_training_records(cfg: Config, skips: SkipLog) -> list[tuple[str, list[QARecord]]]:
    """(name, records) of every `data.train` source, read before the model is built, so that a
    missing file or a source without a usable record stops the run at once (DataError); the
    `data.val` sources are read once too, for the same reason. Bad training records are skipped
    and written to `skips` (stage "load"). Then the leak guard (data/leaks.py: `data.leak_check`)
    counts training images that are evaluation images and, with `data.exclude_eval_images`,
    drops them."""
    if not cfg.data.train:
        raise ConfigError("data.train is empty: list at least one source in the config")
    for i, spec in enumerate(cfg.data.val):
        load_source(spec, cfg.data, mode="eval", where=f"data.val[{i}]", skipped=[])
    sources = []
    for i, spec in enumerate(cfg.data.train):
        bad: list[Problem] = []
        records = load_source(spec, cfg.data, mode="train", where=f"data.train[{i}]", skipped=bad)
        skips.add([skip_entry(p, source=source_name(spec), stage="load") for p in bad])
        if bad:
            log.warning("%s: %d bad records left out (%s)", source_name(spec), len(bad), skips.path or "skipped.jsonl")
        sources.append((source_name(spec), records))
    return leak_guard(sources, cfg.data)


def build_mixture(cfg: Config, model: PixelLM, sources: list[tuple[str, list[QARecord]]]) -> MixtureDataset:
    """The training mixture of `sources` (load_training_records), weighted as `data.train`
    says, with per-source record counts logged."""
    proc = PixelLMProcessor.from_model(model, max_length=cfg.data.max_length)
    sets = [QADataset(records, proc, name) for name, records in sources]
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
    """Per-step bookkeeping: mean losses over micro-batches, samples/s, per-source sample and
    truncated-answer counts (this rank, cumulative), skipped records."""

    def __init__(self) -> None:
        self.sources: Counter = Counter()
        self.truncated: Counter = Counter()  # answers cut to fit max_length, per source
        self.skipped = 0
        self.skip_entries: list[dict] = []  # since the last `take_skips`
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
            self.truncated[s.extra.get("source", s.source)] += int(s.extra.get("truncated", False))
            self.skipped += len(s.extra.get("skipped", []))
            self.skip_entries += s.extra.get("skipped", [])
            self.dropped_targets += s.extra.get("dropped_targets", 0)

    def take_skips(self) -> list[dict]:
        """The skipped records seen since the last call, from every rank (a collective: call it
        on every rank at the same step)."""
        mine, self.skip_entries = self.skip_entries, []
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return mine
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, mine)
        return [e for part in parts for e in part]

    def counts(self) -> dict[str, int]:
        """This rank's cumulative counts, as logged: skip events, dropped targets, and per source
        the samples (n_<source>) and the answers cut to fit max_length (truncated_<source>)."""
        return {"skipped": self.skipped, "dropped_targets": self.dropped_targets,
                **{f"n_{k}": v for k, v in self.sources.items()}, **{f"truncated_{k}": v for k, v in self.truncated.items()}}

    def means(self) -> dict[str, float]:
        return {k: v / max(self.micro, 1) for k, v in self.sums.items()}
