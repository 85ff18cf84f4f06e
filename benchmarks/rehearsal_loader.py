"""`data_throughput.py --rehearsal`: the 7B recipe's loader on the rehearsal's real-size data
against what one A100 consumes.

Data: `make rehearsal`'s folder (`--rehearsal DIR`, its `data/` written by
pixellm.rehearsal.data when missing), else a temporary one: 640x480 JPEGs in every layout
`configs/pixellm_7b.yaml` reads (MUSE with up to 15 polygon/RLE targets, REFER, gRefCOCO,
LLaVA-Instruct, ADE20K, COCO-Stuff, custom JSONL). Processor: the recipe's, with the rehearsal's
Llama-style SentencePiece tokenizer and llava-1.5-7b-hf's configuration (CLIP-L/336: 576 image
tokens), at `data.max_length` and `train.batch_size`. Each training source is loaded with the
training loader alone, then the whole mixture at its weights, for each `--workers` count.

One A100's consumption: FLOPs of one training sample of the full-depth 7B model counted by
`torch.utils.flop_counter.FlopCounterMode` on the meta device (no weights):
    vision (CLIP-L + projector forward; frozen, no backward)
  + LLM forward + backward on the mixture's mean row length (embeddings requiring grad, the LM
    head + cross-entropy on the text positions), + one more LLM forward when the recipe
    checkpoints gradients (the recomputation)
  + codebook fusion + pixel decoder forward + backward for the mixture's mean targets per row,
divided into 40% of the A100's 312 TFLOP/s bf16 peak. Workers a GPU needs = that rate divided
by the loader's rate per worker (the rate with one worker), rounded up.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "pixellm_7b.yaml"
A100_BF16_PEAK = 312e12
ASSUMED_MFU = 0.40


@dataclass(frozen=True)
class SampleFlops:
    """Training FLOPs of one sample of the 7B model (FlopCounterMode, 2 per multiply-add)."""

    seq_len: int
    targets: float
    vision: int
    llm_forward: int
    llm_backward: int
    recompute: int
    masks: float

    @property
    def total(self) -> float:
        return self.vision + self.llm_forward + self.llm_backward + self.recompute + self.masks

    def a100_samples_per_s(self) -> float:
        return ASSUMED_MFU * A100_BF16_PEAK / self.total


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def sample_flops(seq_len: int, targets: float, checkpointing: bool) -> SampleFlops:
    """Count one training sample of the full-depth pixellm-7b on meta (see the module docstring)."""
    from model_size import build_meta_model, vision_flops

    model, _ = build_meta_model("pixellm-7b")
    model.train()
    tower, projector, scales = vision_flops(model)
    width = model.llava.config.text_config.hidden_size
    image_tokens = (model.config.image_size // model.llava.config.vision_config.patch_size) ** 2
    embeds = torch.zeros(1, seq_len, width, device="meta", requires_grad=True)
    graph = {}

    def forward():
        hidden = model.language_model(inputs_embeds=embeds).last_hidden_state
        logits = model.lm_head(hidden[:, image_tokens:])
        labels = torch.zeros(logits.shape[1], dtype=torch.long, device="meta")
        graph["loss"] = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels)

    llm_forward = _counted(forward)
    llm_backward = _counted(lambda: graph.pop("loss").backward())
    recompute = _counted(lambda: model.language_model(inputs_embeds=embeds.detach())) if checkpointing else 0

    def mask_step(n: int) -> int:
        size = model.config.image_size
        hidden = torch.zeros(n, model.config.group_size, width, device="meta", requires_grad=True)

        def step():
            logits = model.decoder(model.codebook(hidden), [s.detach() for s in scales],
                                   torch.zeros(n, dtype=torch.long, device="meta"), (size // 4, size // 4))
            logits.float().sum().backward()

        return _counted(step)

    one = mask_step(1)
    masks = one + (targets - 1) * (mask_step(2) - one) if targets else 0.0
    return SampleFlops(seq_len, targets, tower + projector, llm_forward, llm_backward, recompute, masks)


def prepare(rehearsal: Path | None, work: Path, images: int) -> tuple[Path, Path]:
    """(folder holding `data/`, folder with the checkpoint's config.json and tokenizer). The
    processor folder is always written to `work` (config and tokenizer, no weights), so a
    rehearsal folder is never given a weightless checkpoint."""
    from transformers import LlavaConfig

    from pixellm.rehearsal.checkpoint import llama_style_tokenizer, llava_7b_config
    from pixellm.rehearsal.data import write_rehearsal_data

    root = rehearsal or work / "rehearsal"
    if not (root / "data").is_dir():
        write_rehearsal_data(root, images=images)
    processor_dir = work / "processor"
    config: LlavaConfig = llava_7b_config(llm_layers=1)
    config.save_pretrained(processor_dir)
    llama_style_tokenizer().save_pretrained(processor_dir)
    return root, processor_dir


def load_recipe_sources(root: Path, processor_dir: Path):
    """(cfg, processor, [(name, records)], weights) of the 7B recipe over `root`'s data."""
    from pixellm.build import text_processor
    from pixellm.config import load_config
    from pixellm.data.skips import SkipLog
    from pixellm.training.setup import load_training_records

    cfg = load_config(RECIPE, [f"model.llava_path={processor_dir}"])
    skips = SkipLog(None)
    with contextlib.chdir(root):  # the recipe's data paths are relative to the run's directory
        sources = load_training_records(cfg, skips)
    if skips.entries:
        print(f"warning: {len(skips.entries)} records could not be loaded", file=sys.stderr)
    return cfg, text_processor(cfg), sources, [s.weight for s in cfg.data.train]


def measure(args, work: Path) -> dict:
    """Loader rows per (source, workers) and the A100 consumption; see the module docstring."""
    from data_throughput import measure_loader, one_source, timed

    from pixellm.data.mixture import MixtureDataset, QADataset

    root, processor_dir = timed("rehearsal data + processor", lambda: prepare(args.rehearsal_dir, work, args.rehearsal_images))
    cfg, proc, sources, weights = load_recipe_sources(root, processor_dir)
    bs, pad = args.batch_size or cfg.train.batch_size, proc.tokenizer.pad_token_id
    mixtures = {name: one_source(records, name, proc, args.seed) for name, records in sources}
    mixtures["mixture (recipe weights)"] = MixtureDataset(
        [QADataset(records, proc, name) for name, records in sources], weights, seed=cfg.data.seed)
    rows = {}
    with contextlib.chdir(root):  # mask files of some layouts are read relative to the data root
        for name, mixture in mixtures.items():
            for w in args.workers:
                rows[name, w] = timed(f"{name} loader, {w} workers", lambda m=mixture, w=w: measure_loader(
                    m, pad, batch_size=bs, workers=w, batches=args.batches, warmup=args.warmup_batches))
    whole = [r for (name, _), r in rows.items() if name.startswith("mixture")]
    seq_len = round(sum(r["tokens_per_row"] for r in whole) / len(whole))
    targets = sum(r["targets_per_row"] for r in whole) / len(whole)
    flops = timed("7B FLOPs per sample (meta)", lambda: sample_flops(seq_len, targets, cfg.train.gradient_checkpointing))
    return {"root": root, "cfg": cfg, "proc": proc, "records": {n: len(r) for n, r in sources}, "rows": rows,
            "flops": flops, "batch_size": bs}


def workers_needed(rate_per_worker: float, consumption: float) -> int:
    return math.ceil(consumption / rate_per_worker) if rate_per_worker > 0 else -1


def print_report(m: dict, load_at_start: float) -> None:
    import os

    f: SampleFlops = m["flops"]
    need = f.a100_samples_per_s()
    print(f"\n# 7B recipe loader on the rehearsal's 640x480 data ({m['root']}), batch {m['batch_size']}, "
          f"max_length {m['cfg'].data.max_length}, image {m['proc'].image_size}px")
    print(f"# host: {os.cpu_count()} CPUs, 1-min load average {load_at_start:.1f} at start / "
          f"{os.getloadavg()[0]:.1f} at end, {torch.get_num_threads()} torch thread(s); 1 per loader worker")
    print(f"# one A100 consumes {need:.2f} samples/s: {f.total / 1e12:.2f} TFLOPs per training sample "
          f"(7B, {f.seq_len} tokens, {f.targets:.2f} targets: vision {f.vision / 1e12:.2f} + LLM forward "
          f"{f.llm_forward / 1e12:.2f} + backward {f.llm_backward / 1e12:.2f} + recompute {f.recompute / 1e12:.2f} "
          f"+ masks {f.masks / 1e12:.3f}) at {ASSUMED_MFU:.0%} of {A100_BF16_PEAK / 1e12:.0f} TFLOP/s bf16\n")
    header = (f"{'source':<26} {'records':>7} {'workers':>7} {'samples/s':>10} {'per worker':>10} {'best':>7} "
              f"{'tok/row':>7} {'tgt/row':>7} {'A100 needs':>10} {'workers/GPU':>11}")
    print(header, "-" * len(header), sep="\n")
    for (name, workers), r in m["rows"].items():
        per_worker = r["samples_per_s"] / max(workers, 1)
        records = m["records"].get(name, sum(m["records"].values()))
        needed = workers_needed(per_worker, need) if workers == 1 else ""
        print(f"{name:<26} {records:>7} {workers:>7} {r['samples_per_s']:>10.2f} {per_worker:>10.2f} "
              f"{r['best_samples_per_s']:>7.2f} {r['tokens_per_row']:>7.0f} {r['targets_per_row']:>7.2f} "
              f"{need:>10.2f} {needed!s:>11}")
    whole = m["rows"].get(("mixture (recipe weights)", 1))
    if whole:
        print(f"\nworkers per GPU (mixture, 1-worker rate {whole['samples_per_s']:.2f} samples/s on this CPU): "
              f"{workers_needed(whole['samples_per_s'], need)} to feed one A100 at {need:.2f} samples/s "
              f"(data.num_workers in the recipe: {m['cfg'].data.num_workers})")
    else:
        print("\n(run with --workers 1 for the workers-per-GPU figure)")


def run(args) -> int:
    import os
    import tempfile

    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pixellm-rehearsal-loader-") as tmp:
        t = time.perf_counter()
        m = measure(args, Path(tmp))
        print_report(m, load_at_start)
        print(f"({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    return 0
