"""Run logging: a plain JSONL metrics file always, wandb when enabled (never blocking)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class RunLogger:
    """Rank-0 logger. wandb mode: WANDB_MODE in the environment wins over the config; online
    without credentials or network falls back to offline instead of failing or hanging."""

    def __init__(self, output_dir: str | Path, *, enabled: bool, wandb_mode: str, project: str, config: dict) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.run = None
        self.start = time.time()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE", wandb_mode)
        if mode != "disabled":
            self.run = self._init_wandb(mode, project, config, Path(output_dir))

    @staticmethod
    def _init_wandb(mode: str, project: str, config: dict, out: Path):
        import wandb

        settings = wandb.Settings(init_timeout=30, silent=True)
        try:
            return wandb.init(project=project, mode=mode, config=config, dir=str(out), settings=settings)
        except Exception as e:  # no API key, no network: keep training, log offline
            print(f"wandb {mode} failed ({e}); logging offline instead")
            return wandb.init(project=project, mode="offline", config=config, dir=str(out), settings=settings)

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time() - self.start, 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.run is not None:
            self.run.log(values, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
