"""Evaluate a PixelLM on one CPU or GPU, no DeepSpeed needed.

    python evaluate.py outputs/demo --dataset synthetic:val --dataset synthetic:compositional
    python evaluate.py MODEL_DIR --dataset refcoco:val --dataset refcocog:test --data-root data
    torchrun --nproc_per_node 4 evaluate.py MODEL_DIR --dataset muse:test_many   # sharded, exact
    python evaluate.py MODEL_DIR --dataset joint:data/pixmmvp/joint.jsonl   # VQA + grounding items

MODEL: an exported model folder, a training run folder (its latest checkpoint) or a YAML config.
Writes <out>/<dataset>[_<mode>]/{predictions.jsonl,metrics.json} and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from pixellm.data.joint import load_joint
from pixellm.data.skips import SKIPPED_FILE, SkipLog, skip_entry
from pixellm.data.sources import load_source
from pixellm.entry import user_errors_exit
from pixellm.evaluation.datasets import EvalDataset, parse_dataset
from pixellm.evaluation.joint import evaluate_joint
from pixellm.evaluation.loading import eval_config, load_model
from pixellm.evaluation.report import format_table
from pixellm.evaluation.runner import evaluate_split
from pixellm.evaluation.units import select_unit
from pixellm.precision import DTYPE_CHOICES, resolve_dtype
from pixellm.predictor import PixelLMPredictor
from pixellm.training.validation import limit_images


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder, training run folder / checkpoint, or YAML config")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.batch_size=16")
    p.add_argument("--dataset", action="append", required=True, metavar="NAME:SPLIT",
                   help="synthetic:val, muse:test_less, refcoco:val, refcocog@umd:test, grefcoco:val, custom:FILE.jsonl, "
                   "joint:FILE.jsonl")
    p.add_argument("--protocol", choices=["both", "teacher_forced", "generated"], default="both",
                   help="RefCOCO-family protocol(s); MUSE and custom data are always generated")
    p.add_argument("--per", choices=["expression", "instance"], default="expression",
                   help="averaging unit of the RefCOCO family: every expression (LISA, PixelLM) or each referred "
                   "object by its first expression (Seg-Zero, VisionReasoner); other datasets keep theirs")
    p.add_argument("--data-root", default="data", help="root of the dataset layout (README)")
    p.add_argument("--image-root", default=None, help="override the image folder")
    p.add_argument("--out", default=None, help="output folder (default: eval.output_dir)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="weights dtype (auto: bf16 on CUDA GPUs that support it, else fp16 on CUDA; fp32 on CPU)")
    return p.parse_intermixed_args(argv)


def _distributed() -> tuple[int, int]:
    """Rank and world size under torchrun (gloo on CPU, NCCL on GPU), or of the process group
    this process already joined; (0, 1) otherwise."""
    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ:
            return 0, 1
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


@user_errors_exit  # a config error exits 2, a data error 1, each as one `error:` line
def main(argv=None) -> dict:
    args = parse_args(argv)
    rank, world = _distributed()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.device == "cuda" else args.device
    cfg = eval_config(args.model, args.overrides)
    out = Path(args.out or cfg.eval.output_dir)
    skips = SkipLog(out / SKIPPED_FILE if rank == 0 else None)
    splits = [(ds, load_split(ds, cfg, skips)) for ds in (
        parse_dataset(t, data_root=args.data_root, image_root=args.image_root, protocol=args.protocol, per=args.per)
        for t in args.dataset)]
    model, cfg = load_model(args.model, cfg=cfg, device=device, dtype=resolve_dtype(args.dtype, device))  # data first
    predictor = PixelLMPredictor(model)
    results = {}
    for ds, records in splits:
        for mode in ds.modes:
            key = ds.name if len(ds.modes) == 1 else f"{ds.name}/{mode}"
            folder = out / key.replace(":", "_").replace("/", "_")
            if ds.protocol == "joint":  # two prompts per item: the answer, then the grounding
                results[key] = evaluate_joint(
                    predictor, records, folder, batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                    rank=rank, world_size=world, skips=skips)
                continue
            results[key] = evaluate_split(
                predictor, records, ds.protocol, mode, folder, batch_size=cfg.eval.batch_size,
                max_new_tokens=cfg.eval.max_new_tokens, rank=rank, world_size=world, split=ds.source.split, skips=skips,
                per=ds.per,
            )
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(results, indent=2, sort_keys=True))
        print(format_table(results))
        if skips.events:
            print(f"data: {skips.summary()}", file=sys.stderr)
    return results


def load_split(ds: EvalDataset, cfg, skips: SkipLog) -> list:
    """The split's records (limited by eval.limit_images); malformed ones are written to `skips`
    (joint items: a malformed one stops the run with its file, line and reason)."""
    if ds.protocol == "joint":
        return limit_images(load_joint(Path(ds.source.annotations), Path(ds.source.image_root)), cfg.eval.limit_images)
    bad: list = []
    records = load_source(ds.source, cfg.data, mode="eval", where=f"--dataset {ds.name}", skipped=bad)
    skips.add([skip_entry(p, source=ds.name, stage="load") for p in bad])
    if ds.protocol == "refer":  # per instance: only the first expression of each object is run
        records, _ = select_unit(records, ds.per or "expression")
    return limit_images(records, cfg.eval.limit_images)


if __name__ == "__main__":
    main()
