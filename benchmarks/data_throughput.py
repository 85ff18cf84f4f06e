"""Data-loader throughput against the tiny model's training consumption rate.

    python benchmarks/data_throughput.py [--muse-images 300] [--synthetic-images 1000] [--batches 30]
                                         [--train-steps 8] [--workers 0 2] [--threads 1] [--profile]
    python benchmarks/data_throughput.py --rehearsal [--rehearsal-dir outputs/rehearsal] [--workers 1 2]

`--rehearsal`: the 7B recipe's loader on real-size (640x480) data against what one A100
consumes, and so the loader workers a GPU needs (rehearsal_loader.py says how). Otherwise:

Everything is written to a temporary folder; nothing is downloaded. Two loaders, both through the
exact training input path of `pixellm.training.setup` (QADataset -> MixtureDataset -> StepSampler
-> DataLoader(collate, prefetch_factor=4, persistent workers)) with the config's processor:
(a) MUSE: a MUSE-format fixture (JPEG images of 64..128 x 64..96 pixels, several questions each,
    instances as COCO polygons, compressed and uncompressed RLE, text_answers with `{seg}`);
(b) custom: the synthetic shapes task from `generate_synthetic` read with `load_custom` (the
    `synthetic` source of configs/tiny_synthetic.yaml).
The loader rate is the steady state after `--warmup-batches` untimed batches (worker start-up).
Training consumption: the config's model (`build_pixellm(cfg.model)`), fp32 AdamW with the
config's lr / betas / weight decay; one step = forward + compute_losses + backward + optimizer
step on `train.batch_size` pre-loaded synthetic samples, after 2 warm-up steps (no DeepSpeed, no
gradient clipping).

Timing on a shared machine: this process runs `--threads` torch threads (default 1; each loader
worker gets 1): on a 2-core box shared with other jobs a 2-thread tiny-model step swings between
0.25 s and 10 s (OpenMP threads waiting for a descheduled sibling), a 1-thread one stays near its
quiet-machine 0.26-0.4 s. Each rate is the steady-state mean and the best (fastest window of 5
loader batches / fastest training step).

The ratio is (loader samples/s, 2 workers) / (training samples/s); >= 5 keeps the trainer fed with
margin. Loader and training are measured one after the other (in a real run the workers share the
cores with the trainer). `--profile` (automatic when a ratio is below 5) splits the per-sample
loader time into image decode, image transform, tokenization, mask decode, collate and the
worker->main hand-over of a batch (with the number of tensor storages it sends).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  (registers the shared-memory tensor reductions)
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from pixellm.build import build_pixellm
from pixellm.config import Config, load_config
from pixellm.data.batch import collate
from pixellm.data.custom import load_custom
from pixellm.data.masks import decode_mask, encode_rle
from pixellm.data.mixture import MixtureDataset, QADataset, StepSampler
from pixellm.data.muse import load_muse
from pixellm.data.records import QARecord
from pixellm.data.synthetic import generate_synthetic
from pixellm.processor import PixelLMProcessor

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny_synthetic.yaml"
REQUIRED_RATIO = 5.0
CATEGORIES = ("cup", "kettle", "plate", "fork", "dog", "cat", "chair", "lamp", "book", "bottle")
STAGES = ("image decode (PIL open+convert)", "image transform (resize/normalise/pad)",
          "tokenization (encode)", "mask decode")


# ----------------------------------------------------------------------------- fixtures
def uncompressed_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO uncompressed RLE (column-major run lengths, starting with zeros)."""
    flat = mask.flatten(order="F").astype(np.int8)
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])).tolist()
    runs = ([0] if flat[0] else []) + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def _instance(rng: np.random.Generator, h: int, w: int, draw: ImageDraw.ImageDraw) -> dict:
    """One random object drawn into the image; its segmentation in one of the three encodings."""
    x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
    x1, y1 = int(rng.integers(x0 + 4, w)), int(rng.integers(y0 + 4, h))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    kind = int(rng.integers(3))
    if kind == 0:  # polygon (a triangle and, sometimes, a second part)
        seg = [[float(x0), float(y1), float((x0 + x1) / 2), float(y0), float(x1), float(y1)]]
        draw.polygon(seg[0], fill=colour)
        if rng.random() < 0.3:
            seg.append([float(x0), float(y0), float(x0 + 3), float(y0), float(x0 + 3), float(y0 + 3)])
    else:  # an ellipse as compressed or uncompressed RLE
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, max((y1 - y0) / 2, 1), max((x1 - x0) / 2, 1)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        draw.ellipse([x0, y0, x1, y1], fill=colour)
        seg = encode_rle(mask) if kind == 1 else uncompressed_rle(mask)
    name = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    inst = {"segmentation": seg, "bbox": [x0, y0, x1 - x0, y1 - y0], "category_name": name}
    if rng.random() < 0.5:
        inst["rephrased_name"] = f"the {colour[0] % 7}th {name}"
    return inst


def write_muse_fixture(out: Path, num_images: int, questions: int, seed: int = 0) -> tuple[Path, Path]:
    """A MUSE-format annotation file and its images under `out`; returns (annotations, image_root)."""
    rng = np.random.default_rng(seed)
    image_root = out / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(num_images):
        w, h = int(rng.integers(64, 129)), int(rng.integers(64, 97))
        image = Image.fromarray(rng.integers(90, 160, (h, w, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        qs, answers, texts = [], [], []
        for q in range(questions):
            instances = [_instance(rng, h, w, draw) for _ in range(int(rng.integers(0, 4)))]
            qs.append(f"Question {q} about image {i}: which objects would you use to make tea?")
            answers.append(instances)
            texts.append(" and ".join(["this {seg}"] * len(instances)) + "." if instances and rng.random() < 0.7 else None)
        file_name = f"{i:06d}.jpg"
        image.save(image_root / file_name, quality=90)
        records.append({"file_name": file_name, "height": h, "width": w, "image_id": i,
                        "questions": qs, "answers": answers, "text_answers": texts})
    (out / "muse_train.json").write_text(json.dumps(records))
    return out / "muse_train.json", image_root


# ----------------------------------------------------------------------------- measurements
def one_source(records: list[QARecord], name: str, proc: PixelLMProcessor, seed: int) -> MixtureDataset:
    """A training mixture of one source (what pixellm.training.setup.build_mixture builds)."""
    return MixtureDataset([QADataset(records, proc, name)], [1.0], seed=seed)


def make_loader(mixture: MixtureDataset, pad_id: int, *, batch_size: int, workers: int) -> DataLoader:
    """The loader of pixellm.training.setup.make_loader over `mixture` (rank 0 of 1)."""
    return DataLoader(mixture, batch_size=batch_size, sampler=StepSampler(batch_size=batch_size),
                      collate_fn=partial(collate, pad_id=pad_id), num_workers=workers,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def measure_loader(mixture: MixtureDataset, pad_id: int, *, batch_size, workers, batches, warmup, window=5) -> dict:
    """Steady-state samples/s over `batches` batches after `warmup` untimed ones; also the best
    rate over any `window` consecutive batches (the least disturbed by other processes)."""
    loader = make_loader(mixture, pad_id, batch_size=batch_size, workers=workers)
    start = time.perf_counter()
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    stamps, metas, tokens, targets = [time.perf_counter()], [], 0, 0
    for _ in range(batches):
        batch = next(it)
        stamps.append(time.perf_counter())
        metas += batch.rows
        tokens += int(batch.attention_mask.sum())
        targets += sum(len(m) for m in batch.masks or [])
    del it, loader  # shuts the workers down
    window = min(window, batches)
    best = window * batch_size / min(stamps[i + window] - stamps[i] for i in range(batches - window + 1))
    return {"samples_per_s": len(metas) / (stamps[-1] - stamps[0]), "best_samples_per_s": best,
            "warmup_s": stamps[0] - start, "rows": len(metas), "tokens_per_row": tokens / max(len(metas), 1),
            "targets_per_row": targets / max(len(metas), 1),
            "skipped": sum(len(m.extra.get("skipped", [])) for m in metas),
            "dropped_targets": sum(m.extra.get("dropped_targets", 0) for m in metas)}


def _train_step(model, opt, batch, cfg: Config, device: str) -> tuple[float, float]:
    """One forward + compute_losses + backward + optimizer step: (seconds, loss)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    loss = model(batch, loss_weights=cfg.train.loss).loss  # as train.py: the forward asks for what the losses need
    loss.total.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t, float(loss.total.detach())


def measure_training(cfg: Config, batches: list, *, steps: int, warmup: int, device: str) -> dict:
    """Samples/s of forward + compute_losses + backward + AdamW step of the config's model."""
    torch.manual_seed(cfg.train.seed)
    model = build_pixellm(cfg.model, device=device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay)
    batches = [b.to(device) for b in batches]
    steps_run = [_train_step(model, opt, batches[i % len(batches)], cfg, device) for i in range(warmup + steps)]
    times, losses = zip(*steps_run[warmup:], strict=True)
    rows = sum(batches[i % len(batches)].num_rows for i in range(warmup, warmup + steps))
    return {"samples_per_s": rows / sum(times), "best_samples_per_s": batches[0].num_rows / min(times),
            "step_s": statistics.mean(times), "step_s_min": min(times), "step_s_max": max(times),
            "steps": steps, "trainable": sum(p.numel() for p in params), "loss_first": losses[0], "loss_last": losses[-1]}


def _stage_seconds(rec: QARecord, proc: PixelLMProcessor) -> list[float]:
    """`PixelLMProcessor.__call__` on one record re-run stage by stage: seconds per STAGES entry."""
    t0 = time.perf_counter()
    with Image.open(rec.image_path) as im:
        image = im.convert("RGB")
    t1 = time.perf_counter()
    _, meta = proc.preprocess_image(image)
    t2 = time.perf_counter()
    enc = proc.encode(rec.question, rec.answer)
    t3 = time.perf_counter()
    h, w = meta.original_size
    masks = [decode_mask(m, h, w, rec.mask_root) for m in rec.masks[: enc.kept_targets]]
    _ = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.bool)
    return [t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3]


def profile_loader(records: list[QARecord], proc: PixelLMProcessor, *, samples: int, batch_size: int,
                   seed: int) -> dict[str, float]:
    """Mean microseconds per sample of each processor stage, the real call, collate and hand-over."""
    rng = np.random.default_rng(seed)
    chosen = [records[int(i)] for i in rng.integers(len(records), size=samples)]
    stages = np.sum([_stage_seconds(rec, proc) for rec in chosen], axis=0)
    built, whole = _seconds(lambda: [proc(rec) for rec in chosen])
    batches, collate_s = _seconds(lambda: [collate(built[i : i + batch_size], pad_id=proc.tokenizer.pad_token_id)
                                           for i in range(0, len(built), batch_size)])
    # a worker's hand-over of a batch to the main process: each tensor storage moved to shared
    # memory and its file descriptor sent over a socket (dumps: worker side, loads: main side)
    _, ipc = _seconds(lambda: [pickle.loads(ForkingPickler.dumps(b)) for b in batches])
    seconds = {**dict(zip(STAGES, stages, strict=True)), "collate (per sample)": collate_s,
               "processor __call__ as a whole": whole, "worker->main IPC of the batch": ipc}
    out = {k: float(v) / samples * 1e6 for k, v in seconds.items()}
    out["(tensor storages per batch, count)"] = statistics.mean(_count_storages(b) for b in batches)
    return out


def _count_storages(batch) -> int:
    """Distinct tensor storages in a batch (each is one shared-memory segment + fd to send)."""
    ptrs = [t.untyped_storage().data_ptr() for t in {id(t): t for t in _tensors(batch)}.values()]
    return len({p for p in ptrs if p}) + ptrs.count(0)


def _tensors(obj) -> list[torch.Tensor]:
    """Every tensor reachable from a Batch (its own fields and its rows' metadata)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple, dict)):
        return [t for x in (obj.values() if isinstance(obj, dict) else obj) for t in _tensors(x)]
    if hasattr(obj, "__dataclass_fields__"):
        return [t for f in obj.__dataclass_fields__ for t in _tensors(getattr(obj, f))]
    return []


def _seconds(fn: Callable):
    """(fn(), its wall-clock seconds)."""
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def timed(label: str, fn: Callable):
    """fn(), its wall-clock time reported on stderr."""
    result, seconds = _seconds(fn)
    print(f"  {label}: {seconds:.1f}s", file=sys.stderr, flush=True)
    return result


def load_sources(args, cfg: Config, work: Path) -> dict[str, list[QARecord]]:
    """Both fixtures written under `work` and read back with their loaders."""
    synth_root = work / "synthetic"
    timed(f"generate_synthetic ({args.synthetic_images} images)", lambda: generate_synthetic(
        synth_root, args.synthetic_images, 0, 0, size=cfg.data.synthetic.image_size, seed=args.seed, progress=False))
    muse_ann, muse_images = timed(f"MUSE fixture ({args.muse_images} images)", lambda: write_muse_fixture(
        work / "muse", args.muse_images, args.muse_questions, seed=args.seed))
    return {"muse": timed("load_muse", lambda: load_muse(muse_ann, muse_images, "train")),
            "custom/synthetic": timed("load_custom", lambda: load_custom(
                synth_root / "train.jsonl", synth_root, source="synthetic:train"))}


def measure_all(args, cfg: Config, proc: PixelLMProcessor, sources: dict) -> tuple[dict, dict]:
    """Loader rates for every (source, workers), then training on pre-loaded synthetic batches."""
    bs = cfg.train.batch_size
    pad = proc.tokenizer.pad_token_id
    loader_rows = {(name, w): timed(f"{name} loader, {w} workers", partial(
        measure_loader, one_source(records, name, proc, args.seed), pad, batch_size=bs, workers=w,
        batches=args.batches, warmup=args.warmup_batches)) for name, records in sources.items() for w in args.workers}
    it = iter(make_loader(one_source(sources["custom/synthetic"], "synthetic", proc, args.seed), pad,
                          batch_size=bs, workers=0))
    train_batches = [next(it) for _ in range(4)]
    train = timed(f"training, {args.train_steps} steps", lambda: measure_training(
        cfg, train_batches, steps=args.train_steps, warmup=2, device=args.device))
    return loader_rows, train


# ----------------------------------------------------------------------------- report
def print_table(args, cfg: Config, proc: PixelLMProcessor, sources: dict, loader_rows: dict, train: dict,
                load_at_start: float) -> None:
    threads = torch.get_num_threads()
    print(f"\n# data throughput vs training consumption ({args.config.name}, batch {cfg.train.batch_size}, "
          f"max_length {cfg.data.max_length}, image {proc.image_size}px)")
    print(f"# host: {os.cpu_count()} CPUs, 1-min load average {load_at_start:.1f} at start / "
          f"{os.getloadavg()[0]:.1f} at end, torch {torch.__version__} ({threads} thread"
          f"{'s' if threads > 1 else ''}; 1 per loader worker), python {platform.python_version()}, "
          f"training on {args.device}")
    print("# samples/s: steady-state mean; best: fastest window of 5 batches (loader) / fastest step (training)\n")
    header = (f"{'':<18} {'records':>7} {'workers':>7} {'samples/s':>10} {'best':>8} {'start-up s':>10} "
              f"{'tok/row':>7} {'skipped':>7} {'dropped':>7} {'vs train':>8} {'best/best':>9}")
    print(header, "-" * len(header), sep="\n")
    tr, tb = train["samples_per_s"], train["best_samples_per_s"]
    for (name, workers), r in loader_rows.items():
        print(f"{name:<18} {len(sources[name]):>7} {workers:>7} {r['samples_per_s']:>10.1f} "
              f"{r['best_samples_per_s']:>8.1f} {r['warmup_s']:>10.2f} {r['tokens_per_row']:>7.1f} "
              f"{r['skipped']:>7} {r['dropped_targets']:>7} {r['samples_per_s'] / tr:>7.1f}x "
              f"{r['best_samples_per_s'] / tb:>8.1f}x")
    print(f"{'training (tiny)':<18} {'':>7} {'':>7} {tr:>10.1f} {tb:>8.1f} {'':>10} {'':>7} {'':>7} {'':>7} "
          f"{'1.0x':>8} {'1.0x':>9}\n")


def print_ratios(sources: dict, loader_rows: dict, train: dict, bs: int) -> list[str]:
    """Training step summary, loader/training ratios; returns the sources below REQUIRED_RATIO."""
    if train["step_s_max"] > 2 * train["step_s_min"]:
        print("warning: training step times vary more than 2x: other jobs are competing for the CPU")
    print(f"training step: mean {train['step_s']:.3f}s (min {train['step_s_min']:.3f}, max {train['step_s_max']:.3f}) "
          f"over {train['steps']} steps of {bs} samples; {train['trainable']:,} trainable parameters; "
          f"loss {train['loss_first']:.3f} -> {train['loss_last']:.3f}")
    low = []
    for name in sources:
        w = 2 if (name, 2) in loader_rows else max(k for n, k in loader_rows if n == name)
        r = loader_rows[name, w]
        mean, best = r["samples_per_s"] / train["samples_per_s"], r["best_samples_per_s"] / train["best_samples_per_s"]
        ok = min(mean, best) >= REQUIRED_RATIO
        verdict = f"  (requirement >= {REQUIRED_RATIO:g} on both: {'PASS' if ok else 'FAIL'})"
        print(f"ratio {name} loader ({w} workers) / training: {mean:.1f}x (mean rates), "
              f"{best:.1f}x (best rates){verdict if name == 'custom/synthetic' else ''}")
        low += [] if ok else [name]
    return low


def print_profile(args, proc: PixelLMProcessor, sources: dict, bs: int) -> None:
    print(f"\n# loader profile: mean microseconds per sample, single process, {args.profile_samples} samples")
    profiles = {name: profile_loader(records, proc, samples=args.profile_samples, batch_size=bs, seed=args.seed)
                for name, records in sources.items()}
    names = list(profiles)
    print(f"{'stage':<40} " + " ".join(f"{n:>18}" for n in names))
    for stage in profiles[names[0]]:
        print(f"{stage:<40} " + " ".join(f"{profiles[n][stage]:>18.0f}" for n in names))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG, help="model/data/train recipe (default: tiny_synthetic.yaml)")
    ap.add_argument("--muse-images", type=int, default=300, help="MUSE fixture images (default 300)")
    ap.add_argument("--muse-questions", type=int, default=4, help="questions per MUSE image (default 4)")
    ap.add_argument("--synthetic-images", type=int, default=1000, help="synthetic train images (3 questions each)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size of the config (32)")
    ap.add_argument("--batches", type=int, default=30, help="timed loader batches per setting (default 30)")
    ap.add_argument("--warmup-batches", type=int, default=2, help="untimed first loader batches (default 2)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to try (default 0 2)")
    ap.add_argument("--train-steps", type=int, default=8, help="timed training steps (default 8, after 2 warm-up)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of this process (0 = torch's default); 1 keeps timings steady on a shared machine")
    ap.add_argument("--device", default="cpu", help="device of the training measurement (default cpu)")
    ap.add_argument("--profile", action="store_true", help="per-stage loader profile (automatic when a ratio < 5)")
    ap.add_argument("--profile-samples", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="write the fixtures here instead of a temp dir")
    ap.add_argument("--rehearsal", action="store_true",
                    help="instead: the 7B recipe's loader on the rehearsal's 640x480 data vs one A100 (rehearsal_loader.py)")
    ap.add_argument("--rehearsal-dir", type=Path, default=None,
                    help="with --rehearsal: a `make rehearsal` folder (outputs/rehearsal); default: write its data to a temp dir")
    ap.add_argument("--rehearsal-images", type=int, default=6, help="with --rehearsal: photos per source when writing data")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_at_start = os.getloadavg()[0]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.rehearsal:
        from rehearsal_loader import run

        return run(args)
    cfg = load_config(args.config)
    bs = cfg.train.batch_size = args.batch_size or cfg.train.batch_size
    torch.manual_seed(cfg.train.seed)
    proc = PixelLMProcessor.from_model(build_pixellm(cfg.model), max_length=cfg.data.max_length)
    with tempfile.TemporaryDirectory(prefix="pixellm-throughput-") as tmp:
        work = args.keep or Path(tmp)
        print(f"fixtures in {work}", file=sys.stderr)
        sources = load_sources(args, cfg, work)
        loader_rows, train = measure_all(args, cfg, proc, sources)
        print_table(args, cfg, proc, sources, loader_rows, train, load_at_start)
        if print_ratios(sources, loader_rows, train, bs) or args.profile:
            print_profile(args, proc, sources, bs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
