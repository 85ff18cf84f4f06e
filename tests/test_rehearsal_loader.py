"""`python benchmarks/data_throughput.py --rehearsal`: the 7B recipe's loader on real-size data
against one A100's consumption (benchmarks/rehearsal_loader.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(scope="module")
def flops():
    from rehearsal_loader import sample_flops

    return {ckpt: sample_flops(651, 3.0, ckpt) for ckpt in (True, False)}


def test_7b_training_flops_per_sample_follow_the_parameter_count(flops):
    """Forward of a dense decoder ~ 2 x parameters x tokens (+ attention); the backward of frozen
    weights computes input gradients only (~ the forward again); checkpointing recomputes the
    LLM forward (without the LM head); vision is CLIP-L/336's forward only."""
    from model_size import build_meta_model

    f = flops[True]
    model, _ = build_meta_model("pixellm-7b")
    lm = sum(p.numel() for n, p in model.language_model.named_parameters() if "lora_" not in n and "embed" not in n)
    dense = 2 * lm * 651
    assert 1.0 < f.recompute / dense < 1.1  # plus attention scores
    assert 0 < f.llm_forward - f.recompute < 2 * 4096 * 32064 * (651 - 576) * 1.01  # the LM head on text positions
    assert 0.95 < f.llm_backward / f.llm_forward < 1.25
    assert 0.3e12 < f.vision < 0.5e12  # CLIP-L/14 at 336 px: 2 x 303 M params x 577 tokens + attention
    assert flops[False].recompute == 0 and flops[False].total == pytest.approx(f.total - f.recompute)
    assert f.masks > 0 and flops[True].a100_samples_per_s() == pytest.approx(0.4 * 312e12 / f.total)


def test_the_rehearsal_mode_measures_every_recipe_source_and_the_mixture(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "data_throughput.py"), "--rehearsal", "--rehearsal-dir",
           str(tmp_path), "--rehearsal-images", "2", "--batches", "3", "--warmup-batches", "1", "--workers", "0", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert (tmp_path / "data" / "muse").is_dir() and not (tmp_path / "checkpoint").exists()
    from pixellm.config import load_config

    names = load_config(REPO / "configs" / "pixellm_7b.yaml").data.train
    rows = re.findall(r"^(\S+(?: \(recipe weights\))?)\s+(\d+)\s+([01])\s+([\d.]+)\s+([\d.]+)", out, flags=re.M)
    sources = {r[0] for r in rows}
    assert len(sources) == len(names) + 1 and "mixture (recipe weights)" in sources, out
    assert len(rows) == 2 * len(sources) and all(float(r[3]) > 0 for r in rows), out
    need = float(re.search(r"one A100 consumes ([\d.]+) samples/s", out)[1])
    rate, workers = re.search(r"1-worker rate ([\d.]+) samples/s on this CPU\): (\d+) to feed", out).groups()
    assert int(workers) == -(-need // float(rate)), out
