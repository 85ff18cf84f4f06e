"""What a DeepSpeed engine holds between optimizer steps, counted from its own objects.

The keys are the part names of `pixellm plan-memory` (memory_plan.plan_zero2 / plan_zero3), so a
run's summary_rank*.json can be set beside the plan of the same config: the rehearsal does, and
tests/test_multi_gpu.py checks them equal on two ranks. Only the parts that live through the whole
step are here; the buffers that exist for a moment (reduce buckets, gathered parameters, the
step's flattened gradients) need hooks, which tests/test_plan_memory.py sets.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def storage_bytes(tensors: Iterable[torch.Tensor]) -> dict[int, int]:
    """Bytes per distinct storage (views of one buffer count once)."""
    return {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}


def optimizer_state_bytes(opt) -> dict[str, int]:
    """torch AdamW's fp32 moments and `step` scalars under DeepSpeed's flat groups."""
    state = list(opt.optimizer.state.values())
    return {
        "AdamW moments": sum(s[k].untyped_storage().nbytes() for s in state for k in ("exp_avg", "exp_avg_sq")),
        "AdamW step": sum(s["step"].untyped_storage().nbytes() for s in state),
    }


def zero2_state_bytes(engine) -> dict[str, int]:
    params = list(engine.module.parameters())
    opt = engine.optimizer
    return {
        "frozen parameters": sum(storage_bytes(p for p in params if not p.requires_grad).values()),
        "trainable parameters (flat, padded)": sum(storage_bytes(p for p in params if p.requires_grad).values()),
        "fp32 master partition": sum(g.untyped_storage().nbytes() for g in opt.single_partition_of_fp32_groups),
        **optimizer_state_bytes(opt),
    }


def zero3_state_bytes(engine) -> dict[str, int]:
    """Outside forward/backward only the persistent parameters are whole (p.data); the others are
    empty until gathered."""
    opt, params = engine.optimizer, list(engine.module.parameters())
    shards = storage_bytes(p.ds_tensor for p in params)
    whole = storage_bytes(p.data for p in params if p.numel())
    out = {
        "parameter shards": sum(shards.values()),
        "persistent parameters (whole)": sum(v for k, v in whole.items() if k not in shards),
        "IPG bucket": sum(b.buffer.untyped_storage().nbytes() for b in opt.ipg_buckets.values()),
        "gradient partitions": opt.grad_partitions_flat_buffer.untyped_storage().nbytes(),
        "fp32 master shards": sum(
            v for k, v in storage_bytes(opt.fp32_partitioned_groups_flat).items() if k not in shards),
        **optimizer_state_bytes(opt),
    }
    if opt.offload_optimizer:
        out["fp32 gradient buffer"] = sum(g.grad.untyped_storage().nbytes() for g in opt.fp32_partitioned_groups_flat)
    return out


def engine_state_bytes(engine) -> dict[str, int]:
    """Bytes per part on this rank (ZeRO-2 or ZeRO-3, with or without offload)."""
    stage = engine.zero_optimization_stage()
    if stage == 3:
        return zero3_state_bytes(engine)
    if stage == 2:
        return zero2_state_bytes(engine)
    return {}
