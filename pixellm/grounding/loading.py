"""What `probe-grounding` accepts as a model, and the records it probes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..build import CONFIG_NAME, build_pixellm
from ..config import Config, load_config
from ..data.records import QARecord
from ..data.sources import load_source
from ..evaluation.datasets import EvalDataset
from ..evaluation.loading import load_model
from ..modeling.pixellm import PixelLM
from ..training.validation import limit_images


def is_llava_folder(path: Path) -> bool:
    """A llava-hf checkpoint (config.json with model_type "llava") that is not a PixelLM folder."""
    cfg = path / "config.json"
    if not cfg.is_file() or (path / CONFIG_NAME).is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "llava"
    except (OSError, json.JSONDecodeError):
        return False


def load_probe_model(path: str, overrides: list[str], device: str,
                     dtype: torch.dtype | None = None) -> tuple[PixelLM, Config, bool]:
    """(model in eval mode, its config, whether its codebook and decoder are trained).

    A llava-hf folder is built around with fresh codebook tokens that its answers never use: its
    attention is probed as the checkpoint has it. A YAML config builds a fresh model (untrained
    codebook). An exported PixelLM or a run is loaded as `evaluate.py` loads it. dtype None = fp32.
    """
    p = Path(path)
    if is_llava_folder(p):
        cfg = load_config(None, [f"model.llava_path={p}", *overrides])
        return build_pixellm(cfg.model, device=device, dtype=dtype).eval(), cfg, False
    model, cfg = load_model(p, overrides=overrides, device=device, dtype=dtype)
    return model, cfg, p.suffix not in (".yaml", ".yml")


def probe_records(ds: EvalDataset, cfg: Config, limit: int | None) -> list[QARecord]:
    """The split's evaluation records (first `limit` images); unusable ones raise DataError."""
    records = load_source(ds.source, cfg.data, mode="eval", where=f"--dataset {ds.name}")
    return limit_images(records, limit)
