"""Training-step throughput of a small random PixelLM: FLOPs, step time, utilisation, memory.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--dtype fp32|bf16] [--batch 8]
        [--steps 3] [--warmup 1] [--llm-layers 4] [--llm-width 512] ... (see --help)

The model is the `tiny` preset (random weights, in-memory tokenizer) at the sizes given by the
flags, with train_llm=True and train_vision=True so every weight trains. A batch holds `--batch`
rows, each its own image, with 1-3 `<seg>` targets and random masks at a random original size.

1. FLOPs of one training step, counted once with torch.utils.flop_counter.FlopCounterMode over
   forward + compute_losses + backward (2 FLOPs per multiply-add; matmul/conv/attention only,
   element-wise ops and norms not counted). The AdamW step is NOT counted (it is element-wise).
2. Wall time per step: median of `--steps` steps after `--warmup` steps, AdamW step included, so
   achieved FLOP/s = counted FLOPs / median step time (slightly understates the model's own rate).
3. Peak: best of `--gemm-reps` torch.mm on square matrices (`--gemm-sizes`) in the run's dtype,
   same process, same torch.get_num_threads(): a measured dense-GEMM peak, not a datasheet one
   (the median mm is printed too: the best mm may catch a quiet moment the median step did not).
4. Utilisation = achieved / peak. Memory: CUDA max_memory_allocated over the timed steps, or on
   CPU the process's peak RSS (ru_maxrss, lifetime high-water mark, imports included).
bf16 casts the whole model to bf16 (pure bf16 params and AdamW state, no fp32 master copy).
On a shared machine step times are noisy: compare medians, and runs on the same device only. On a
busy 2-core box `--threads 1` is far steadier (and often faster) than 2 threads, whose OpenMP
workers wait on a descheduled sibling (see benchmarks/data_throughput.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from pixellm.build import build_pixellm  # noqa: E402
from pixellm.config import DecoderSettings, LossWeights, ModelConfig, TinySizes  # noqa: E402
from pixellm.constants import SEG_PLACEHOLDER  # noqa: E402
from pixellm.data.batch import Batch, ImageMeta  # noqa: E402
from pixellm.processor import PixelLMProcessor  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ANSWERS = [f"the red circle {SEG_PLACEHOLDER}.",
           f"the blue square {SEG_PLACEHOLDER} and the green one {SEG_PLACEHOLDER}.",
           f"three shapes: {SEG_PLACEHOLDER}, {SEG_PLACEHOLDER} and {SEG_PLACEHOLDER}."]


def model_config(a: argparse.Namespace) -> ModelConfig:
    tiny = TinySizes(hidden_size=a.llm_width, num_layers=a.llm_layers, num_heads=a.llm_heads,
                     intermediate_size=a.llm_mlp, vision_hidden_size=a.vision_width,
                     vision_layers=a.vision_layers, vision_heads=a.vision_heads, patch_size=a.patch)
    dec = DecoderSettings(dim=a.dec_dim, depth=a.dec_depth, heads=a.dec_heads, mlp_dim=a.dec_mlp)
    return ModelConfig(preset="tiny", image_size=a.image_size, decoder_layers=[-2, max(1, a.vision_layers // 2)],
                       train_llm=True, train_vision=True, attn_implementation="sdpa", tiny=tiny, decoder=dec)


def make_batch(model, rows: int, seed: int = 0) -> Batch:
    """`rows` rows, each its own random image and 1-3 targets with random masks at original size."""
    g = torch.Generator().manual_seed(seed)
    proc, r = PixelLMProcessor.from_model(model, max_length=4096), model.config.image_size
    ids, labels, metas, masks = [], [], [], []
    for b in range(rows):
        enc = proc.encode("Segment the shapes.", ANSWERS[b % len(ANSWERS)])
        h, w = (int(x) for x in torch.randint(r // 2, r + 1, (2,), generator=g))
        scale = r / max(h, w)
        ids.append(enc.input_ids)
        labels.append(enc.labels)
        metas.append(ImageMeta((h, w), (round(h * scale), round(w * scale))))
        masks.append(torch.rand(enc.kept_targets, h, w, generator=g) > 0.5)
    length = max(len(i) for i in ids)
    input_ids = torch.full((rows, length), model.tokenizer.pad_token_id)
    lab, att = torch.full((rows, length), -100), torch.zeros((rows, length), dtype=torch.long)
    for b, (i, lb) in enumerate(zip(ids, labels, strict=True)):
        input_ids[b, : len(i)], lab[b, : len(i)], att[b, : len(i)] = i, lb, 1
    return Batch(input_ids=input_ids, attention_mask=att, labels=lab, image_index=torch.arange(rows),
                 pixel_values=torch.randn(rows, 3, r, r, generator=g), image_meta=metas, masks=masks)


def train_step(model, batch: Batch, weights: LossWeights, opt: torch.optim.Optimizer | None = None) -> float:
    loss = model(batch, loss_weights=weights).loss
    loss.total.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return float(loss.total.detach())


def count_step_flops(model, batch: Batch, weights: LossWeights) -> int:
    """FLOPs of forward + losses + backward (no optimizer); leaves no gradients behind."""
    with FlopCounterMode(display=False) as counter:
        train_step(model, batch, weights)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, batch, weights, opt, device, warmup: int, steps: int) -> list[float]:
    """Seconds per full step (AdamW included) for `steps` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        train_step(model, batch, weights, opt)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(model, batch, weights, opt)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def gemm_peak(sizes: list[int], reps: int, device: torch.device, dtype: torch.dtype) -> dict[int, tuple[float, float]]:
    """(best, median) FLOP/s over `reps` runs of an n x n @ n x n torch.mm, per size."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)  # warm-up
        sync(device)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            times.append(time.perf_counter() - start)
        out[n] = (2 * n**3 / min(times), 2 * n**3 / statistics.median(times))
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = p.add_argument
    add("--device", choices=["cpu", "cuda"], default="cpu")
    add("--dtype", choices=sorted(DTYPES), default="fp32")
    add("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    add("--batch", type=int, default=8)
    add("--steps", type=int, default=3)
    add("--warmup", type=int, default=1)
    add("--seed", type=int, default=0)
    for name, default in (("llm-layers", 4), ("llm-width", 512), ("llm-heads", 8), ("llm-mlp", 1376),
                          ("vision-width", 256), ("vision-layers", 4), ("vision-heads", 4), ("patch", 14),
                          ("image-size", 224), ("dec-dim", 256), ("dec-depth", 2), ("dec-heads", 8),
                          ("dec-mlp", 1024), ("gemm-reps", 5)):
        add(f"--{name}", type=int, default=default)
    add("--gemm-sizes", type=int, nargs="+", default=[1024, 2048])
    return p.parse_args(argv)


def run(a: argparse.Namespace) -> dict:
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    if a.threads:
        torch.set_num_threads(a.threads)
    rss_before = peak_rss_mib()
    torch.manual_seed(a.seed)
    model = build_pixellm(model_config(a), device=device, dtype=dtype if dtype != torch.float32 else None).train()
    batch, weights = make_batch(model, a.batch, a.seed).to(device, dtype), LossWeights()
    params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    flops = count_step_flops(model, batch, weights)
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    times = time_steps(model, batch, weights, opt, device, a.warmup, a.steps)
    step = statistics.median(times)
    peaks = gemm_peak(a.gemm_sizes, a.gemm_reps, device, dtype)
    peak, peak_median = max(v[0] for v in peaks.values()), max(v[1] for v in peaks.values())
    mem = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib())
    return dict(params=params, trainable=sum(p.numel() for p in trainable), tokens=int(batch.attention_mask.sum()),
                seq=batch.input_ids.shape[1], targets=sum(len(m) for m in batch.masks), flops=flops, times=times,
                step=step, achieved=flops / step, peaks=peaks, peak=peak, peak_median=peak_median, mem=mem, rss_before=rss_before)


def format_report(a: argparse.Namespace, r: dict) -> str:
    dev = "CUDA max_memory_allocated (timed steps)" if a.device == "cuda" else "CPU peak RSS (ru_maxrss)"
    rows = [
        ("device / dtype / torch threads", f"{a.device} / {a.dtype} / {torch.get_num_threads()}"),
        ("parameters (trainable)", f"{r['params'] / 1e6:.2f}M ({r['trainable'] / 1e6:.2f}M)"),
        ("batch: rows / padded seq / real tokens / targets", f"{a.batch} / {r['seq']} / {r['tokens']} / {r['targets']}"),
        ("FLOPs per step (fwd+loss+bwd, no optimizer)", f"{r['flops'] / 1e9:.2f} GFLOP"),
        (f"step time, median of {a.steps} (AdamW incl.)", f"{r['step'] * 1e3:.0f} ms"),
        ("step times min / max", f"{min(r['times']) * 1e3:.0f} / {max(r['times']) * 1e3:.0f} ms"),
        ("achieved", f"{r['achieved'] / 1e9:.2f} GFLOP/s"),
        *((f"torch.mm {n}x{n} {a.dtype}: best / median of {a.gemm_reps}", f"{b / 1e9:.2f} / {m / 1e9:.2f} GFLOP/s")
          for n, (b, m) in r["peaks"].items()),
        ("UTILISATION = achieved / best mm (peak)", f"{100 * r['achieved'] / r['peak']:.1f} %"),
        ("  (achieved / median mm, same noise as steps)", f"{100 * r['achieved'] / r['peak_median']:.1f} %"),
        (dev, f"{r['mem']:.0f} MiB"),
    ]
    if a.device == "cpu":
        rows.append(("CPU peak RSS before building the model", f"{r['rss_before']:.0f} MiB"))
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(f"{k:<{width}}{v}" for k, v in rows)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.dtype == "bf16" and a.device == "cpu":
        print("note: bf16 on CPU is rarely faster than fp32; numbers are for reference only")
    start = time.perf_counter()
    r = run(a)
    print(format_report(a, r))
    print(f"({time.perf_counter() - start:.1f} s; timings are noisy on a shared machine)")
    return r


if __name__ == "__main__":
    main()
