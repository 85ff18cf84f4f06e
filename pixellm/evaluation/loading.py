"""What evaluate.py and chat accept as a model: a model folder, a training run / DeepSpeed
checkpoint, or a YAML config (built fresh: random tiny, or the llava checkpoint it names)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..build import CONFIG_NAME, build_pixellm
from ..config import Config, ConfigError, load_config
from ..modeling.pixellm import PixelLM


def eval_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """The config to take data and eval settings from, read without building the model: the
    YAML itself, else the training run's config.yaml (a model folder inside a run, or a run /
    checkpoint), else the defaults. ConfigError if `path` is none of the accepted kinds."""
    p = Path(path)
    if p.suffix in (".yaml", ".yml"):
        return load_config(p, overrides)
    if (p / CONFIG_NAME).is_file():
        return _run_config(p.parent, overrides)
    from ..export import resolve_checkpoint

    try:
        _, run_dir = resolve_checkpoint(p)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not a model folder ({CONFIG_NAME}), a training run / checkpoint, "
                          "or a YAML config") from None
    return _run_config(run_dir, overrides)


def load_model(
    path: str | Path, *, overrides: list[str] | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
    cfg: Config | None = None,
) -> tuple[PixelLM, Config]:
    """The model to evaluate (in `dtype`; None = fp32) and its eval config (`eval_config`,
    unless already read)."""
    p = Path(path)
    cfg = cfg or eval_config(p, overrides)
    if p.suffix in (".yaml", ".yml"):
        return build_pixellm(cfg.model, device=device, dtype=dtype).eval(), cfg
    if (p / CONFIG_NAME).is_file():
        return PixelLM.from_pretrained(p, device=device, dtype=dtype).eval(), cfg
    from ..export import load_from_checkpoint

    return load_from_checkpoint(p, device=device, dtype=dtype).eval(), cfg


def _run_config(run_dir: Path, overrides: list[str] | None) -> Config:
    """The training run's config when there is one (for data.synthetic etc.), else defaults."""
    saved = run_dir / "config.yaml"
    return load_config(saved if saved.is_file() else None, overrides)
