"""Checkpoints: DeepSpeed engine state + RNG, an atomically written `latest`, pruning, resume.

Layout of a run folder:
    <run>/model/                pixellm_config.json + tokenizer (written once, at start)
    <run>/checkpoints/step_N/   DeepSpeed shards, rng_state_<rank>.pt, COMPLETE
    <run>/checkpoints/latest    name of the newest complete checkpoint (os.replace: atomic)
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

from ..config import ConfigError
from .distributed import DistInfo, barrier

LATEST = "latest"
COMPLETE = "COMPLETE"


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


def save_checkpoint(engine, output_dir: str | Path, step: int, dist: DistInfo, keep_last: int) -> Path:
    """Save engine + RNG at `step`; only then point `latest` at it, atomically. A crash
    mid-save leaves `latest` on the previous complete checkpoint."""
    root = checkpoint_root(output_dir)
    tag = f"step_{step}"
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
    torch.save(_rng_state(), root / tag / f"rng_state_{dist.rank}.pt")
    barrier()
    if dist.is_main:
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


def load_checkpoint(engine, path: Path, dist: DistInfo) -> int:
    """Restore engine, optimizer, scheduler and RNG state; return the step to continue from."""
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name)
    rng = path / f"rng_state_{dist.rank}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=True))
    return int(client["step"])
