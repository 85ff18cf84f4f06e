"""Checkpoints: DeepSpeed engine state + RNG, an atomically written `latest`, pruning, resume.

Layout of a run folder:
    <run>/model/                pixellm_config.json + tokenizer (written once, at start)
    <run>/config.yaml           the run's resolved config
    <run>/checkpoints/step_N/   DeepSpeed shards, rng_state_<rank>.pt, pixellm_checkpoint.json, COMPLETE
    <run>/checkpoints/latest    name of the newest complete checkpoint (os.replace: atomic)

Frozen parameters (the LLaVA base under LoRA: 99% of the model) are left out of a checkpoint
whenever they can be read again from disk (`model.llava_path`, the preset's checkpoint or
`model.init_from`; not for the random tiny preset): a 7B checkpoint is then the trainable part
and its optimizer states (about 0.7 GB instead of 15 GB), and resuming does not read the whole
model on every rank (which ran a 24 GB host out of memory at 2 ranks in the rehearsal). Resume
builds the model from its base as the run did, then loads the trainable part; export does the
same (pixellm.export). `pixellm_checkpoint.json` says which kind a checkpoint is.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from ..config import ConfigError
from .distributed import DistInfo, barrier

LATEST = "latest"
COMPLETE = "COMPLETE"
INFO = "pixellm_checkpoint.json"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()[1]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, _, gauss = random.getstate()
    random.setstate((version, tuple(state["python"]), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, output_dir: str | Path, step: int, dist: DistInfo, keep_last: int,
                    exclude_frozen: bool = False) -> Path:
    """Save engine + RNG at `step` (without the frozen parameters when `exclude_frozen`: module
    docstring); only then point `latest` at it, atomically. A crash mid-save leaves `latest` on
    the previous complete checkpoint."""
    root = checkpoint_root(output_dir)
    tag = f"step_{step}"
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False,
                           exclude_frozen_parameters=exclude_frozen)
    torch.save(_rng_state(), root / tag / f"rng_state_{dist.rank}.pt")
    barrier()
    if dist.is_main:
        info = {"step": step, "frozen_parameters": "excluded" if exclude_frozen else "included"}
        (root / tag / INFO).write_text(json.dumps(info))
        (root / tag / COMPLETE).write_text(str(step))
        tmp = root / f".{LATEST}.tmp"
        tmp.write_text(tag)
        os.replace(tmp, root / LATEST)
        prune(root, keep_last)
    barrier()
    return root / tag


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (never the `latest` one)."""
    if keep_last <= 0:
        return []
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    done = sorted((p for p in root.glob("step_*") if (p / COMPLETE).is_file()), key=lambda p: int(p.name[5:]))
    doomed = [p for p in done[:-keep_last] if p.name != latest]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def find_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`auto` -> the latest complete checkpoint of this run (None if there is none yet);
    a folder -> that checkpoint, which must be complete."""
    if resume is None:
        return None
    if resume == "auto":
        root = checkpoint_root(output_dir)
        if not (root / LATEST).is_file():
            return None
        path = root / (root / LATEST).read_text().strip()
    else:
        path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise ConfigError(f"train.resume={resume}: {path} is not a complete checkpoint (no {COMPLETE} marker)")
    return path


def base_on_disk(model_cfg) -> bool:
    """Whether the run's frozen weights can be read again from a checkpoint on disk (anything
    but the random tiny preset), so that its checkpoints may leave them out."""
    from ..build import is_random_tiny

    return model_cfg.init_from is not None or not is_random_tiny(model_cfg)


def frozen_excluded(step_dir: Path) -> bool:
    """Whether a checkpoint was saved without its frozen parameters (older ones have no INFO)."""
    info = Path(step_dir) / INFO
    return info.is_file() and json.loads(info.read_text()).get("frozen_parameters") == "excluded"


def load_checkpoint(engine, path: Path, dist: DistInfo) -> int:
    """Restore engine, optimizer, scheduler and RNG state; return the step to continue from.
    A checkpoint without frozen parameters leaves the engine's own (built from the same base)."""
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=not frozen_excluded(path))
    rng = path / f"rng_state_{dist.rank}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=True))
    return int(client["step"])
