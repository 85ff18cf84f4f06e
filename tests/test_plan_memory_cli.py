"""`pixellm plan-memory`, the command: one JSON object for the 7B and 13B recipes, a table for a
tiny config."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pixellm import memory_plan as mp

REPO = Path(__file__).resolve().parents[1]


def _model_size_script():
    spec = importlib.util.spec_from_file_location(
        "model_size", REPO / "benchmarks" / "model_size.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def deepspeed_logger():
    """DeepSpeed's logger keeps the stdout of its first import: import it outside `capsys`, whose
    streams close when a test ends (the command sends it to stderr while it plans)."""
    from deepspeed.utils import logger

    return logger


@pytest.mark.parametrize("recipe", ["pixellm_7b.yaml", "pixellm_13b.yaml"])
def test_cli_prints_one_json_object_for_the_recipes(recipe, deepspeed_logger, capsys):
    from pixellm.cli import main

    assert (
        main(
            [
                "plan-memory",
                str(REPO / "configs" / recipe),
                "--gpus",
                "8",
                "--gpu-mem",
                "80",
                "--json",
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)  # the whole of stdout is one object
    assert set(plan["stages"]) == set(mp.STAGES)
    for stage in plan["stages"].values():
        assert {
            "params_gb",
            "grads_gb",
            "optimizer_gb",
            "activations_gb",
            "total_gb",
            "fits",
        } <= set(stage)
        assert isinstance(stage["fits"], bool)
        parts = (
            stage["params_gb"] + stage["grads_gb"] + stage["optimizer_gb"] + stage["activations_gb"]
        )
        assert stage["total_gb"] == pytest.approx(parts, abs=0.005)
    s = plan["stages"]
    assert (
        s["zero3"]["params_gb"] < s["zero2"]["params_gb"]
        and s["zero3_offload"]["optimizer_gb"] == 0
    )
    assert (
        plan["inputs"] | {"precision": "bf16", "batch_size": 2, "max_length": 1024}
        == plan["inputs"]
    )
    if recipe == "pixellm_7b.yaml":  # the same count as benchmarks/model_size.py's meta build
        ms = _model_size_script()
        params, trainable = ms.count_parameters(ms.build_meta_model("pixellm-7b")[0])
        assert plan["parameters"] == {"total": params["total"], "trainable": trainable["total"]}


def test_cli_table_for_a_tiny_config(deepspeed_logger, capsys):
    from pixellm.cli import main

    assert (
        main(
            [
                "plan-memory",
                str(REPO / "configs/tiny_synthetic.yaml"),
                "train.batch_size=4",
                "--gpus",
                "2",
                "--gpu-mem",
                "24",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage"))
    assert [line.split()[0] for line in lines[header + 1 : header + 4]] == list(mp.STAGES)
    assert "fits 24 GB" in lines[header] and "micro-batch 4" in out and "formulas:" in out
    assert main(["plan-memory", str(REPO / "configs/tiny_synthetic.yaml"), "--gpus", "0"]) == 2
