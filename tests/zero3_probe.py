"""Run under torchrun by test_multi_gpu.py: build the training model as train.py does and write,
per rank, how many parameter elements it holds and the dtype of the loaded LLM weights.

    torchrun --nproc_per_node 2 tests/zero3_probe.py CONFIG OUT_DIR [overrides...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pixellm.config import load_config
from pixellm.modeling.zero3 import held_elements, is_partitioned
from pixellm.training.distributed import init_distributed
from pixellm.training.setup import build_model, deepspeed_config, seed_everything


def main() -> None:
    config, out, *overrides = sys.argv[1:]
    cfg = load_config(config, overrides)
    dist = init_distributed()
    ds_cfg = deepspeed_config(cfg, dist)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, dist, ds_cfg)
    held, total = held_elements(model)
    llm = {n: p for n, p in model.language_model.named_parameters() if "lora_" not in n and "trainable_tokens_delta" not in n}
    report = {
        "held": held, "total": total,
        "llm_dtypes": sorted({str(p.dtype) for p in llm.values()}),
        "llm_partitioned": all(is_partitioned(p) for p in llm.values()),
        "decoder_partitioned": all(is_partitioned(p) for p in model.decoder.parameters()),
    }
    Path(out, f"probe_rank{dist.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
