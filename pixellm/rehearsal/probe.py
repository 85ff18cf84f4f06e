"""Loading check, run under torchrun (the rehearsal's bf16 stage, tests/test_multi_gpu.py): build
the training model as train.py does and write, per rank, how many parameter elements it holds
(ZeRO-3 partitions it while loading) and the dtypes of the loaded LLM weights.

    torchrun --nproc_per_node 2 -m pixellm.rehearsal.probe CONFIG OUT_DIR [overrides...]
"""

from __future__ import annotations

import json
import resource
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
    ds_cfg = deepspeed_config(cfg, dist, config)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, dist, ds_cfg)
    held, total = held_elements(model)
    llm = {n: p for n, p in model.language_model.named_parameters() if "lora_" not in n and "trainable_tokens_delta" not in n}
    report = {
        "held": held, "total": total,
        "llm_dtypes": sorted({str(p.dtype) for p in llm.values()}),
        "llm_partitioned": all(is_partitioned(p) for p in llm.values()),
        "decoder_partitioned": all(is_partitioned(p) for p in model.decoder.parameters()),
        "bf16_enabled": bool(ds_cfg.get("bf16", {}).get("enabled")),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
    }
    Path(out, f"probe_rank{dist.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
