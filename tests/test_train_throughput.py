"""benchmarks/train_throughput.py at a trivially small size: the pieces run and agree."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
TINY = ["--batch", "2", "--steps", "1", "--warmup", "0", "--llm-layers", "1", "--llm-width", "32",
        "--llm-heads", "2", "--llm-mlp", "64", "--vision-width", "32", "--vision-layers", "2",
        "--vision-heads", "2", "--patch", "8", "--image-size", "32", "--dec-dim", "32", "--dec-depth", "1",
        "--dec-heads", "2", "--dec-mlp", "64", "--gemm-sizes", "64", "--gemm-reps", "2"]


@pytest.fixture(scope="module")
def tt():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_and_flop_count(tt, capsys):
    r = tt.main(TINY)
    assert r["trainable"] == r["params"] > 0  # train_llm + train_vision: every weight trains
    assert r["flops"] > 0 and r["step"] > 0 and r["achieved"] == pytest.approx(r["flops"] / r["step"])
    assert set(r["peaks"]) == {64} and r["peak"] >= r["peak_median"] > 0
    assert r["targets"] == 1 + 2  # rows cycle through 1, 2, 3 targets
    assert "UTILISATION" in capsys.readouterr().out
    # one test, not two: the first training step in a process pays seconds of one-time set-up
    args = tt.parse_args(TINY)
    torch.manual_seed(0)
    model = tt.build_pixellm(tt.model_config(args)).train()
    weights = tt.LossWeights()
    one, two = (tt.count_step_flops(model, tt.make_batch(model, n), weights) for n in (1, 2))
    assert all(p.grad is None for p in model.parameters())
    assert two > one > 0
