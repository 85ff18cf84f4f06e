"""Generation cost vs answer length: with the KV cache it must grow linearly, not quadratically.

    python benchmarks/generation_scaling.py [--short 64] [--long 256] [--repeats 3]
        [--hidden 256] [--layers 4] [--image-size 224] [--patch 14] [--no-cache-short 32 --no-cache-long 128]

A tiny-but-not-trivial random PixelLM (tiny preset: 4-layer 256-wide LLM, 224 px image with
14 px patches -> 256 image tokens) answers the same question about the same image, once with
`--short` and once with `--long` new tokens. The image is encoded once; each timing is one
`pixellm.generation.generate` call (prefill + decoding), the median of `--repeats` runs.

So that the model really produces that many tokens, this script's model copy gets an output head
that can never choose EOS or padding (a wrapper around its lm_head; the library is untouched),
and the produced token count is checked. With the cache, long/short time must be <= --max-ratio
(4.5; the ideal linear ratio is long/short = 4 minus the shared prefill); the same measurement
without the cache (use_cache=False, every step re-reads the whole sequence) shows the quadratic
contrast. Exit status 1 when the cached ratio is above the limit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from pixellm.build import build_pixellm
from pixellm.config import DecoderSettings, ModelConfig, TinySizes
from pixellm.generation import GenerationConfig, generate
from pixellm.processor import PixelLMProcessor

QUESTION = "Segment the red circle and the blue square."


class NoStopHead(nn.Module):
    """An output head whose EOS and padding logits are -inf, so generation runs to max_new_tokens."""

    def __init__(self, head: nn.Module, banned: list[int]) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("banned", torch.tensor(sorted(set(banned))), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        logits[..., self.banned.to(logits.device)] = -float("inf")
        return logits


def build_model(args: argparse.Namespace):
    cfg = ModelConfig(
        preset="tiny", decoder_layers=[-2, 1], image_size=args.image_size,
        tiny=TinySizes(
            hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads, intermediate_size=args.hidden * 4,
            vision_hidden_size=args.vision_hidden, vision_layers=3, vision_heads=4, patch_size=args.patch,
        ),
        decoder=DecoderSettings(dim=64, depth=2, heads=4, mlp_dim=128),
    )
    torch.manual_seed(0)
    model = build_pixellm(cfg, device=args.device).eval()
    tok = model.tokenizer
    model.llava.lm_head = NoStopHead(model.llava.lm_head, [tok.eos_token_id, tok.pad_token_id]).to(args.device)
    return model


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_generation(model, prompt, vision, n: int, use_cache: bool, repeats: int, device: str) -> float:
    """Median wall seconds of one generate call producing exactly `n` tokens."""
    index = torch.zeros(1, dtype=torch.long, device=device)
    cfg = GenerationConfig(max_new_tokens=n, use_cache=use_cache)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = generate(model, [prompt], vision, index, cfg)
        sync(device)
        times.append(time.perf_counter() - start)
        if len(out[0].token_ids) != n:
            raise RuntimeError(f"asked for {n} tokens, generate produced {len(out[0].token_ids)}")
    return statistics.median(times)


def report(label: str, short: int, long: int, t_short: float, t_long: float) -> float:
    ratio = t_long / t_short
    marginal = (t_long - t_short) / (long - short) * 1e3
    print(
        f"{label:<9} {short:>4} tokens {t_short * 1e3:9.1f} ms ({t_short / short * 1e3:6.2f} ms/token)   "
        f"{long:>4} tokens {t_long * 1e3:9.1f} ms ({t_long / long * 1e3:6.2f} ms/token)   "
        f"ratio {ratio:5.2f} (length x{long / short:g})   marginal {marginal:6.2f} ms/token"
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", type=int, default=64, help="new tokens, short run (default 64)")
    p.add_argument("--long", type=int, default=256, help="new tokens, long run (default 256)")
    p.add_argument("--no-cache-short", type=int, default=None, help="short run without the cache (default --short)")
    p.add_argument("--no-cache-long", type=int, default=None, help="long run without the cache (default --long)")
    p.add_argument("--no-cache-repeats", type=int, default=1, help="repeats without the cache (default 1: slow)")
    p.add_argument("--skip-no-cache", action="store_true", help="only the cached measurement")
    p.add_argument("--repeats", type=int, default=3, help="repeats per cached measurement; the median is reported")
    p.add_argument("--max-ratio", type=float, default=4.5, help="fail above this cached long/short time ratio")
    p.add_argument("--hidden", type=int, default=256, help="LLM width (default 256)")
    p.add_argument("--layers", type=int, default=4, help="LLM layers (default 4)")
    p.add_argument("--heads", type=int, default=4, help="LLM attention heads (default 4)")
    p.add_argument("--vision-hidden", type=int, default=128, help="CLIP width (default 128)")
    p.add_argument("--image-size", type=int, default=224, help="input size in pixels (default 224)")
    p.add_argument("--patch", type=int, default=14, help="CLIP patch size (default 14)")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: one-token decoding steps gain nothing from intra-op threads, and on "
        "a busy machine oversubscribed OpenMP threads make them 10-30x slower; 0 = torch's default)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = build_model(args)
    proc = PixelLMProcessor.from_model(model, max_length=4096)
    image = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, args.image_size, args.image_size, generator=image).to(args.device)
    prompt = proc.encode_prompt(QUESTION)
    with torch.no_grad():
        vision = model.encode_images(pixels)
    llm_params = sum(p.numel() for p in model.language_model.parameters())
    print(
        f"model: tiny preset, LLM {args.layers} layers x {args.hidden} ({llm_params / 1e6:.1f} M params), "
        f"{model.config.num_image_tokens} image tokens, prompt {prompt.numel()} tokens, "
        f"device {args.device}, {torch.get_num_threads()} threads"
    )
    # warm-up: allocator, kernels, lazy initialisation
    time_generation(model, prompt, vision, 8, True, 1, args.device)

    t_short = time_generation(model, prompt, vision, args.short, True, args.repeats, args.device)
    t_long = time_generation(model, prompt, vision, args.long, True, args.repeats, args.device)
    print(f"greedy generation, EOS disabled, median of {args.repeats} (KV cache)")
    ratio = report("KV cache", args.short, args.long, t_short, t_long)

    if not args.skip_no_cache:
        short = args.no_cache_short or args.short
        long = args.no_cache_long or args.long
        n_short = time_generation(model, prompt, vision, short, False, args.no_cache_repeats, args.device)
        n_long = time_generation(model, prompt, vision, long, False, args.no_cache_repeats, args.device)
        print(f"median of {args.no_cache_repeats} (no cache: every step re-runs the whole sequence)")
        report("no cache", short, long, n_short, n_long)
        if (short, long) == (args.short, args.long):
            print(f"no cache / KV cache at {long} tokens: x{n_long / t_long:.1f}")

    ok = ratio <= args.max_ratio
    print(f"KV-cache time ratio {ratio:.2f} {'<=' if ok else '>'} {args.max_ratio}: {'PASS (linear)' if ok else 'FAIL'}"
          f"   total {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
