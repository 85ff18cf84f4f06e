"""DeepSpeed ZeRO-3 at build time: partitioned loading and construction, gathered edits.

Each helper is a no-op without a ZeRO-3 config and imports DeepSpeed only when given one, so
single-GPU inference and CPU tests never touch DeepSpeed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def zero_stage(ds_config: dict | None) -> int:
    """The ZeRO stage of a DeepSpeed config (0 when it has none)."""
    return int(((ds_config or {}).get("zero_optimization") or {}).get("stage", 0))


@contextmanager
def zero3_build(ds_config: dict | None) -> Iterator[object | None]:
    """While active (and after, as long as the yielded object lives), transformers builds and
    loads models partitioned over the ranks (its DeepSpeed integration: `from_pretrained` reads
    each rank's shard only), and peft gathers weights where it needs them.

    Yields transformers' `HfDeepSpeedConfig`, or None without a ZeRO-3 config. Keep it referenced
    for as long as the model is used: transformers and peft look it up through a weak reference.
    """
    if zero_stage(ds_config) != 3:
        yield None
        return
    from transformers.integrations import HfDeepSpeedConfig

    yield HfDeepSpeedConfig(ds_config)


@contextmanager
def partitioned_modules(ds_config: dict | None) -> Iterator[None]:
    """Modules constructed inside are partitioned as each is built (`deepspeed.zero.Init`)."""
    if zero_stage(ds_config) != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        yield


def is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


@contextmanager
def gathered(params: list[torch.Tensor], modifier_rank: int = 0) -> Iterator[None]:
    """Inside, ZeRO-3-partitioned `params` hold their full tensors; what rank `modifier_rank`
    writes into them is kept when they are partitioned again. Plain tensors pass through."""
    if not any(is_partitioned(p) for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def held_elements(module: nn.Module) -> tuple[int, int]:
    """(parameter elements this rank holds, elements of the whole model). A ZeRO-3 parameter
    counts its local shard (`ds_tensor`, padding included); a plain one counts in full."""
    held = total = 0
    for p in module.parameters():
        if is_partitioned(p):
            held += p.ds_tensor.numel()
            total += p.ds_numel
        else:
            held += p.numel()
            total += p.numel()
    return held, total


@contextmanager
def plain_adapter_setup(hf_zero3: object | None, params: list[torch.Tensor]) -> Iterator[None]:
    """Inject peft adapters into a ZeRO-3-partitioned model on any device.

    peft's ZeRO-3 path for trainable tokens allocates on `torch.cuda.current_device()` (it
    fails on CPU ranks). Instead, the weights the adapters copy from (`params`: the embedding
    and LM-head matrices) are gathered here, and peft takes its plain path on the full tensors;
    the adapters it creates are partitioned by `deepspeed.initialize` like any other parameter.
    """
    if hf_zero3 is None:
        yield
        return
    from transformers.integrations.deepspeed import (
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    with gathered(params, modifier_rank=None):
        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            set_hf_deepspeed_config(hf_zero3)
