"""benchmarks/model_size.py on the tiny preset: the table's numbers agree with the model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "model_size.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("model_size", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ms():
    return _load_script()


@pytest.fixture(scope="module")
def report(ms):
    return ms.measure("tiny", text_tokens=16, pool=4)


def test_components_sum_to_total(ms, report):
    assert set(report.params) == {*ms.COMPONENTS, "total"}
    assert sum(report.params[c] for c in ms.COMPONENTS) == report.params["total"]
    assert report.params["total"] == sum(p.numel() for p in report.model.parameters())
    assert sum(report.trainable[c] for c in ms.COMPONENTS) == report.trainable["total"]
    assert report.trainable["total"] == sum(p.numel() for p in report.model.parameters() if p.requires_grad)
    assert all(report.trainable[c] <= report.params[c] for c in ms.COMPONENTS)


def test_component_counts_match_modules(ms, report):
    model = report.model
    assert report.params["pixel decoder"] == sum(p.numel() for p in model.decoder.parameters())
    assert report.params["codebook fusion"] == sum(p.numel() for p in model.codebook.parameters())
    assert report.params["vision tower"] == sum(p.numel() for p in model.vision_tower.parameters())
    assert report.params["projector"] == sum(p.numel() for p in model.projector.parameters())
    # LoRA and the token rows are the only extras over the bare LLaVA
    extras = report.params["LoRA adapters"] + report.params["trainable token rows"]
    assert report.params["total"] - report.params["codebook fusion"] - report.params["pixel decoder"] == (
        report.llava_params + extras
    )
    hidden = model.llava.config.text_config.hidden_size
    rows = 0 if model.config.settings.train_llm else 2 * model.config.group_size * hidden  # train_llm: no adapters
    assert report.params["trainable token rows"] == rows
    assert all(report.params[c] > 0 for c in ms.COMPONENTS if c not in ("LoRA adapters", "trainable token rows"))


def test_flops_are_consistent(report):
    f = report.flops
    assert report.image_tokens == 64 and report.pooled_tokens == 16
    assert all(v > 0 for v in f.values())
    assert f["prefill_pooled"] < f["prefill"]  # 16 + 16 tokens vs 64 + 16
    assert f["mask_extra"] < f["mask"]  # the necks run once per image


def test_main_prints_the_table(ms, capsys):
    ms.main(["--preset", "tiny", "--text-tokens", "8", "--pool", "2"])
    out = capsys.readouterr().out
    for label in (*ms.COMPONENTS, "total / trainable total", "tiny LLaVA", "(a) vision", "(b) LLM prefill",
                  "(c) mask branch", "pooled / unpooled"):
        assert label in out
