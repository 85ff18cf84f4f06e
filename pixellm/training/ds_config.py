"""DeepSpeed JSON templates with "auto" fields, filled from the training config in one place."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..config import ConfigError, TrainConfig

SCHEDULERS = {"linear": "WarmupDecayLR", "cosine": "WarmupCosineLR", "constant": "WarmupLR"}


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on a CUDA device that supports it, else fp32 (CPU bf16 is emulated and slow)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _scheduler(train: TrainConfig) -> dict:
    # DeepSpeed's schedules need >= 1 warm-up step; "no warm-up" is one step that starts (and
    # stays) at the peak, so the first step already trains at train.lr
    warm = min(train.warmup_steps, max(train.max_steps - 1, 0))
    start = 0.0 if warm else 1.0  # fraction of the peak lr at step 0
    warm = max(warm, 1)
    if train.schedule == "linear":
        params = {"warmup_min_lr": start * train.lr, "warmup_max_lr": train.lr, "warmup_num_steps": warm,
                  "total_num_steps": max(train.max_steps, warm)}
    elif train.schedule == "cosine":
        params = {"warmup_min_ratio": start, "warmup_num_steps": warm, "total_num_steps": max(train.max_steps, warm),
                  "cos_min_ratio": 0.0}
    else:
        params = {"warmup_min_lr": start * train.lr, "warmup_max_lr": train.lr, "warmup_num_steps": warm}
    return {"type": SCHEDULERS[train.schedule], "params": {**params, "warmup_type": "linear"}}


def _fill(node, values: dict, path: str):
    """Replace every "auto" leaf whose dotted path is in `values`; an unknown "auto" is an error."""
    if isinstance(node, dict):
        return {k: _fill(v, values, f"{path}.{k}" if path else k) for k, v in node.items()}
    if node == "auto":
        if path not in values:
            raise ConfigError(f"DeepSpeed config: no value for the 'auto' field {path}")
        return values[path]
    return node


def fill_deepspeed_config(template: dict, train: TrainConfig, *, world_size: int, device: torch.device) -> dict:
    """Fill batch, accumulation, precision, optimizer, schedule and clipping from `train`."""
    precision = resolve_precision(train.precision, device)
    values = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.clip_grad,
        "bf16.enabled": precision == "bf16",
        "optimizer.params.lr": train.lr,
        "optimizer.params.betas": list(train.betas),
        "optimizer.params.weight_decay": train.weight_decay,
    }
    cfg = copy.deepcopy(template)
    if "scheduler" in cfg:
        cfg["scheduler"] = _scheduler(train)  # the schedule type follows train.schedule
    cfg = _fill(cfg, values, "")
    if train.optimizer == "torch" and "optimizer" in cfg:
        _use_torch_adamw(cfg, device)
    return cfg


def offloads_optimizer(ds_cfg: dict) -> bool:
    offload = (ds_cfg.get("zero_optimization") or {}).get("offload_optimizer") or {}
    return offload.get("device", "none") not in ("none", None)


def _use_torch_adamw(cfg: dict, device: torch.device) -> None:
    """Make DeepSpeed build torch.optim.AdamW instead of its own optimizers: FusedAdam (GPU) and
    DeepSpeedCPUAdam (optimizer offload) are JIT-compiled on first use, which needs nvcc or a
    C++ toolchain (and takes minutes). On CUDA with the states on the GPU, torch's fused kernel."""
    if cfg["optimizer"].get("type", "").lower() not in ("adam", "adamw"):
        raise ConfigError(f"train.optimizer=torch needs an Adam/AdamW optimizer in the DeepSpeed config, "
                          f"got {cfg['optimizer'].get('type')!r} (set train.optimizer=deepspeed to use it)")
    params = cfg["optimizer"].setdefault("params", {})
    params["torch_adam"] = True
    if device.type == "cuda" and not offloads_optimizer(cfg):
        params["fused"] = True


PACKAGE_DS_CONFIGS = Path(__file__).resolve().parents[1] / "ds_configs"
"""zero2.json, zero3.json, zero3_offload.json, shipped with the package (the repository's
top-level ds_configs/ points here)."""


def resolve_deepspeed_path(path: str | Path, config_file: str | Path | None = None) -> Path:
    """Where `train.deepspeed` points: an absolute path as it is; a relative one next to the
    config file, then in the working directory, then by name among the package's own
    ds_configs/. ConfigError listing the places tried."""
    p = Path(path)
    tried = [p] if p.is_absolute() else [
        *([Path(config_file).parent / p] if config_file is not None else []), Path.cwd() / p, PACKAGE_DS_CONFIGS / p.name,
    ]
    found = next((c for c in tried if c.is_file()), None)
    if found is None:
        raise ConfigError(f"train.deepspeed: {path} not found (looked for {', '.join(map(str, tried))})")
    return found


def load_deepspeed_config(path: str | Path, train: TrainConfig, *, world_size: int, device: torch.device,
                          config_file: str | Path | None = None) -> dict:
    """The DeepSpeed JSON `path` (resolve_deepspeed_path) filled from `train`."""
    path = resolve_deepspeed_path(path, config_file)
    try:
        template = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"train.deepspeed: {path} is not valid JSON: {e}") from None
    return fill_deepspeed_config(template, train, world_size=world_size, device=device)
