"""Train PixelLM with DeepSpeed.

    python train.py configs/tiny_synthetic.yaml train.lr=1e-3          # one plain process (CPU or GPU)
    torchrun --nproc_per_node 2 train.py configs/x.yaml                 # several processes
    deepspeed --hostfile hosts train.py configs/pixellm_7b.yaml         # multi-node

The loop is all here; the pieces it calls live in pixellm/training/.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from pixellm.build import save_pixellm
from pixellm.config import config_to_dict, load_config
from pixellm.data.skips import SKIPPED_FILE, SkipLog
from pixellm.entry import user_errors_exit
from pixellm.training.checkpoint import base_on_disk, find_resume, load_checkpoint, save_checkpoint
from pixellm.training.distributed import init_distributed
from pixellm.training.held import engine_state_bytes
from pixellm.training.logger import RunLogger
from pixellm.training.setup import (
    StepMeter,
    TrainResult,
    build_mixture,
    build_model,
    check_run_folder,
    clear_run_folder,
    deepspeed_config,
    load_training_records,
    make_engine,
    make_loader,
    param_checksum,
    seed_everything,
    seed_rank_streams,
)
from pixellm.training.validation import validate

log = logging.getLogger("pixellm.train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 model.lora.r=16")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="end after N steps of this call without the final checkpoint, as if killed (to test resume)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p.parse_args(argv)


@user_errors_exit  # a config error exits 2, a data error 1, each as one `error:` line
def main(argv=None, *, stop_after: int | None = None) -> TrainResult:
    """Run training; returns this process's per-step losses and the trained model.
    stop_after: end after that many steps of this call, as if killed (tests of resume)."""
    args = parse_args(argv)
    stop_after = args.stop_after if stop_after is None else stop_after
    cfg = load_config(args.config, args.overrides)
    dist = init_distributed()
    logging.basicConfig(level=logging.INFO if dist.is_main else logging.WARNING, format="%(message)s")
    out = Path(cfg.train.output_dir)
    ds_cfg = deepspeed_config(cfg, dist, args.config)
    check_run_folder(out, cfg.train)
    skips = SkipLog(None)
    sources = load_training_records(cfg, skips)  # data problems surface before anything is written
    clear_run_folder(out, cfg.train, dist)
    if dist.is_main:
        skips.write_to(out / SKIPPED_FILE)
    seed_everything(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg, dist, ds_cfg)
    seed_rank_streams(cfg.train.seed, dist.rank)  # different dropout on each rank
    if dist.is_main:
        save_pixellm(model, out / "model", weights=False)  # architecture + tokenizer, for export
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    data = build_mixture(cfg, model, sources)
    engine = make_engine(model, cfg, ds_cfg)
    resume = find_resume(cfg.train.resume, out)
    start = load_checkpoint(engine, resume, dist) if resume else 0
    if resume:
        log.info("resumed from %s at step %d", resume, start)
    loader = iter(make_loader(data, cfg, dist, start * cfg.train.grad_accum, model.tokenizer.pad_token_id))
    logger = RunLogger(out, enabled=dist.is_main, wandb_mode=cfg.train.wandb_mode,
                       project=cfg.train.wandb_project, config=config_to_dict(cfg))
    meter, losses, grad_norms, t0 = StepMeter(), [], [], time.time()
    bar = tqdm(range(start, cfg.train.max_steps), desc="train", initial=start, total=cfg.train.max_steps,
               disable=not dist.is_main, dynamic_ncols=True)
    for step in bar:
        engine.train()
        for _ in range(cfg.train.grad_accum):
            batch = next(loader).to(dist.device)
            loss = engine(batch, loss_weights=cfg.train.loss).loss  # losses inside the forward (ZeRO-3)
            engine.backward(loss.total)
            engine.step()
            meter.add(loss.as_floats(), batch)
        stats = meter.means()
        rate = meter.samples * dist.world_size / max(time.time() - t0, 1e-9)
        lr = engine.get_lr()[0]
        grad_norm = engine.get_global_grad_norm()  # before clipping, of the rank-averaged gradient
        grad_norm = None if grad_norm is None else float(grad_norm)  # a tensor under ZeRO-3
        losses.append(stats["total"])
        grad_norms.append(grad_norm)
        bar.set_postfix(loss=f"{stats['total']:.3f}", lr=f"{lr:.2e}", sps=f"{rate:.1f}")
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.max_steps:
            skips.add(meter.take_skips())
            norm = {} if grad_norm is None else {"grad_norm": grad_norm}
            logger.log(done, {**stats, "lr": lr, **norm, "samples_per_s": rate, **meter.counts()})
        meter.reset()
        t0 = time.time()
        if cfg.train.eval_every and done % cfg.train.eval_every == 0:
            logger.log(done, validate(engine.module, cfg, dist, out / f"val_step{done}", skips))
        last = done == cfg.train.max_steps
        if (cfg.train.save_every and done % cfg.train.save_every == 0) or last:
            save_checkpoint(engine, out, done, dist, cfg.train.keep_last, exclude_frozen=base_on_disk(cfg.model))
        if stop_after is not None and done - start >= stop_after:
            break
    skips.add(meter.take_skips())
    if skips.events or meter.dropped_targets:
        log.warning("data: %s; %d targets dropped by truncation", skips.summary(), meter.dropped_targets)
    logger.close()
    held = engine_state_bytes(engine)  # beside `pixellm plan-memory`'s parts; before the checksum's
    # gather, whose release frees the trainable persistent parameters ZeRO-3 keeps whole between steps
    result = TrainResult(losses, engine.module, param_checksum(engine.module), grad_norms)
    (out / f"summary_rank{dist.rank}.json").write_text(json.dumps(
        {"losses": losses, "grad_norms": grad_norms, "checksum": result.checksum, "counts": meter.counts(),
         "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,  # ru_maxrss: KiB on Linux
         "engine_bytes": held}))
    return result


if __name__ == "__main__":
    main()
