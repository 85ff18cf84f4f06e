"""What evaluate.py and chat accept as a model: a model folder, a training run / DeepSpeed
checkpoint, or a YAML config (built fresh: random tiny, or the llava checkpoint it names)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..build import CONFIG_NAME, build_pixellm
from ..config import Config, load_config
from ..modeling.pixellm import PixelLM


def load_model(
    path: str | Path, *, overrides: list[str] | None = None, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[PixelLM, Config]:
    """The model to evaluate (in `dtype`; None = fp32) and the config to take data/eval settings from."""
    p = Path(path)
    if p.suffix in (".yaml", ".yml"):
        cfg = load_config(p, overrides)
        return build_pixellm(cfg.model, device=device, dtype=dtype).eval(), cfg
    if (p / CONFIG_NAME).is_file():
        return PixelLM.from_pretrained(p, device=device, dtype=dtype).eval(), _run_config(p.parent, overrides)
    from ..export import load_from_checkpoint, resolve_checkpoint

    _, run_dir = resolve_checkpoint(p)
    return load_from_checkpoint(p, device=device, dtype=dtype).eval(), _run_config(run_dir, overrides)


def _run_config(run_dir: Path, overrides: list[str] | None) -> Config:
    """The training run's config when there is one (for data.synthetic etc.), else defaults."""
    saved = run_dir / "config.yaml"
    return load_config(saved if saved.is_file() else None, overrides)
