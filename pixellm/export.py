"""`pixellm export CHECKPOINT OUT_DIR`: consolidate ZeRO shards (any stage), merge LoRA, write a
config-complete folder that `PixelLM.from_pretrained` loads with no flags."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch, transformers, deepspeed load when a function runs, not with the parser
    import torch

    from .modeling.pixellm import PixelLM


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """A run folder, its checkpoints/ folder or one step_N folder -> (step folder, run folder)."""
    from .training.checkpoint import COMPLETE, LATEST

    p = Path(path)
    if (p / "checkpoints" / LATEST).is_file():
        p = p / "checkpoints"
    if (p / LATEST).is_file():
        p = p / (p / LATEST).read_text().strip()
    if not (p / COMPLETE).is_file():
        raise FileNotFoundError(f"{path}: no complete DeepSpeed checkpoint found (expected {COMPLETE} or {LATEST})")
    return p, p.parent.parent


def load_from_checkpoint(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> PixelLM:
    """A trained model straight from a DeepSpeed checkpoint (ZeRO shards of any stage
    consolidated to fp32), in `dtype` (None = fp32)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from .build import build_skeleton, read_config
    from .training.checkpoint import frozen_excluded

    step_dir, run_dir = resolve_checkpoint(path)
    model_dir = run_dir / "model"
    excluded = frozen_excluded(step_dir)
    # without its frozen parameters, the checkpoint goes on top of the run's base, built as the
    # run built it; else on an uninitialised skeleton of the saved architecture
    model = _base_model(run_dir) if excluded else build_skeleton(read_config(model_dir), model_dir, device=device, dtype=dtype)
    state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir.parent), tag=step_dir.name,
                                                     exclude_frozen_parameters=excluded)
    result = model.load_state_dict(state, strict=False)  # copies into the model's own storage
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad} if excluded else set()
    missing = [k for k in result.missing_keys if k not in frozen]
    if missing or result.unexpected_keys:
        raise KeyError(
            f"{step_dir}: checkpoint does not match the saved architecture: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def _base_model(run_dir: Path) -> PixelLM:
    """The run's model before training (fp32): its LLaVA base (`model.llava_path`, the preset's
    checkpoint or `model.init_from` in `<run>/config.yaml`), codebook rows, LoRA and decoder."""
    from .build import build_pixellm
    from .config import ConfigError, load_config

    cfg = load_config(run_dir / "config.yaml")
    try:
        return build_pixellm(cfg.model)
    except (ConfigError, OSError) as e:
        raise FileNotFoundError(
            f"{run_dir}: its checkpoints hold the trained weights only; the frozen base comes from "
            f"{cfg.model.init_from or cfg.model.llava_path} (model.init_from / model.llava_path in "
            f"{run_dir / 'config.yaml'}), which could not be read: {e}") from None


def merge_adapters(model: PixelLM) -> PixelLM:
    """Fold LoRA and the trained codebook rows into the base weights, in place. The result has
    the structure of a LoRA-free model (`model.lora.enabled = False`), so it saves and reloads
    with the usual code; fine-tuning it again starts from fresh adapters."""
    from .build import fold_adapters, setup_trainable

    fold_adapters(model)
    settings = dataclasses.replace(model.config.settings, lora=dataclasses.replace(model.config.settings.lora, enabled=False))
    model.config = dataclasses.replace(model.config, settings=settings)
    setup_trainable(model)  # zero-initialised codebook-row adapters, as a fresh LoRA-free build has
    return model


def export(checkpoint: str | Path, out_dir: str | Path, *, keep_lora: bool = False) -> Path:
    model = load_from_checkpoint(checkpoint)
    if keep_lora:
        from safetensors.torch import save_file

        model.save_pretrained(out_dir)
        adapter = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        (Path(out_dir) / "adapter").mkdir(exist_ok=True)
        save_file(adapter, str(Path(out_dir) / "adapter" / "trainable.safetensors"))
    else:
        merge_adapters(model).save_pretrained(out_dir)
    return Path(out_dir)


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="consolidate a DeepSpeed checkpoint into a model folder",
                              description="Consolidate ZeRO shards, merge LoRA and write a from_pretrained folder.")
    p.add_argument("checkpoint", help="run folder, its checkpoints/ folder, or one step_N folder")
    p.add_argument("out_dir")
    p.add_argument("--keep-lora", action="store_true",
                   help="keep LoRA unmerged (adapters stay separate tensors; adapter/trainable.safetensors holds the trained weights alone)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        out = export(args.checkpoint, args.out_dir, keep_lora=args.keep_lora)
    except (FileNotFoundError, KeyError) as e:
        print(f"pixellm export: error: {e}", file=sys.stderr)
        return 1
    print(f"exported to {out}")
    return 0
