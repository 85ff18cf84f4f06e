"""Parameters per component and FLOPs per query of a PixelLM preset, built on the `meta` device.

    python benchmarks/model_size.py --preset pixellm-7b [--text-tokens 64] [--pool 12]

Nothing is downloaded and no weight memory is allocated: the LLaVA of the preset (presets.py gives
the exact llava-hf architecture) is instantiated on `meta`, PixelLM is built around it with the
preset's YAML recipe, and FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`, which
sees shapes only (matmuls, convolutions, attention; 2 FLOPs per multiply-add; element-wise ops,
norms and pooling are not counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlavaConfig, LlavaForConditionalGeneration
from transformers.initialization import no_init_weights

from pixellm.build import build_pixellm, setup_trainable
from pixellm.config import ModelConfig, load_config
from pixellm.constants import seg_token_strings
from pixellm.modeling.pixellm import PixelLM, PixelLMConfig
from pixellm.modeling.vision import patch_grid
from pixellm.presets import LLAVA_HF_IMAGE_TOKEN_ID, PRESETS
from pixellm.tokenization import build_tiny_tokenizer, ensure_image_token

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"tiny": "tiny_synthetic.yaml", "pixellm-7b": "pixellm_7b.yaml", "pixellm-13b": "pixellm_13b.yaml"}
LLAVA_NAMES = {"tiny": "tiny LLaVA", "pixellm-7b": "LLaVA-1.5-7B", "pixellm-13b": "LLaVA-1.5-13B"}
LLAVA_HF_FIRST_NEW_ID = LLAVA_HF_IMAGE_TOKEN_ID + 2  # the llava-hf tokenizer: <image>=32000, <pad>=32001
COMPONENTS = ("vision tower", "projector", "LLM (base)", "LoRA adapters", "trainable token rows",
              "codebook fusion", "pixel decoder")
OURS = ("codebook fusion", "pixel decoder", "LoRA adapters")


@dataclasses.dataclass
class Report:
    preset: str
    model: PixelLM
    llava_params: int  # the bare LLaVA, before LoRA / trainable tokens
    params: dict[str, int]  # COMPONENTS + "total"
    trainable: dict[str, int]  # COMPONENTS + "total"
    flops: dict[str, int]
    image_tokens: int
    pooled_tokens: int
    text_tokens: int


# ----------------------------------------------------------------------------- building


def model_settings(preset: str, pool: int | None = None) -> ModelConfig:
    """The preset's training recipe (configs/*.yaml), model section."""
    cfg = load_config(ROOT / "configs" / RECIPES[preset]).model
    return dataclasses.replace(cfg, image_token_pool=pool)


def meta_llava(llava_cfg: LlavaConfig) -> LlavaForConditionalGeneration:
    with torch.device("meta"), no_init_weights():
        return LlavaForConditionalGeneration._from_config(llava_cfg, attn_implementation="sdpa")


def llava_hf_pixellm_config(cfg: ModelConfig, llava: LlavaForConditionalGeneration) -> PixelLMConfig:
    """What build._make_config gives with the llava-hf tokenizer (codebook ids right after <pad>)."""
    tokens = seg_token_strings(cfg.num_scales, cfg.tokens_per_scale)
    vc = llava.config.vision_config
    size = cfg.image_size or vc.image_size
    return PixelLMConfig(
        settings=cfg, llava=llava.config.to_dict(), seg_tokens=tokens,
        seg_token_ids=list(range(LLAVA_HF_FIRST_NEW_ID, LLAVA_HF_FIRST_NEW_ID + len(tokens))),
        image_token_id=LLAVA_HF_IMAGE_TOKEN_ID, image_size=size,
        num_image_tokens=(cfg.image_token_pool or size // vc.patch_size) ** 2,
    )


def build_meta_model(preset: str, pool: int | None = None) -> tuple[PixelLM, int]:
    """(PixelLM on meta with LoRA and trainable tokens, parameter count of the bare LLaVA)."""
    cfg = model_settings(preset, pool)
    if preset == "tiny":  # the in-memory tokenizer goes through the project's own build path
        tok = build_tiny_tokenizer()
        vocab = len(tok) + cfg.num_scales * cfg.tokens_per_scale
        llava = meta_llava(PRESETS["tiny"](cfg, vocab_size=vocab, image_token_id=ensure_image_token(tok)))
        llava_params = sum(p.numel() for p in llava.parameters())
        return build_pixellm(cfg, llava=llava, tokenizer=tok, device="meta").eval(), llava_params
    llava = meta_llava(PRESETS[preset](cfg))
    llava_params = sum(p.numel() for p in llava.parameters())
    with torch.device("meta"):
        model = PixelLM(config=llava_hf_pixellm_config(cfg, llava), llava=llava)
    setup_trainable(model)
    return model.eval(), llava_params


# ----------------------------------------------------------------------------- counting


def component_of(name: str) -> str:
    if name.startswith("codebook."):
        return "codebook fusion"
    if name.startswith("decoder."):
        return "pixel decoder"
    if ".lora_" in name:
        return "LoRA adapters"
    if "trainable_tokens_delta" in name:
        return "trainable token rows"
    if name.startswith("llava.model.vision_tower."):
        return "vision tower"
    if name.startswith("llava.model.multi_modal_projector."):
        return "projector"
    if name.startswith(("llava.model.language_model.", "llava.lm_head.")):
        return "LLM (base)"
    raise ValueError(f"parameter {name!r} belongs to no component")


def count_parameters(model: torch.nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    """(all, trainable) parameter counts per component, each with a "total"."""
    params, trainable = dict.fromkeys(COMPONENTS, 0), dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():
        part = component_of(name)
        params[part] += p.numel()
        trainable[part] += p.numel() if p.requires_grad else 0
    params["total"], trainable["total"] = sum(params.values()), sum(trainable.values())
    return params, trainable


def count_flops(fn: Callable, *args, **kwargs):
    """(FLOPs, result) of one call, counted on whatever device its tensors live (meta: shapes only)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return counter.get_total_flops(), out


def meta_zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype, device="meta")


def vision_flops(model: PixelLM) -> tuple[int, int, list[torch.Tensor]]:
    """(CLIP tower FLOPs, projector FLOPs, decoder feature maps) for one image."""
    s, size = model.config.settings, model.config.image_size
    native = model.llava.config.vision_config.image_size
    tower, out = count_flops(model.vision_tower, meta_zeros(1, 3, size, size), output_hidden_states=True,
                             interpolate_pos_encoding=size != native)
    projector, _ = count_flops(model.projector, out.hidden_states[s.llm_feature_layer][:, 1:])
    return tower, projector, [patch_grid(out.hidden_states[i]) for i in s.decoder_layers]


def prefill_flops(model: PixelLM, seq_len: int) -> int:
    """LLM prefill of `seq_len` embedded tokens (LoRA unmerged) and the logits of the last one."""
    embeds = meta_zeros(1, seq_len, model.llava.config.text_config.hidden_size)

    def prefill():
        hidden = model.language_model(inputs_embeds=embeds).last_hidden_state
        return model.lm_head(hidden[:, -1:])

    return count_flops(prefill)[0]


def mask_flops(model: PixelLM, scales: list[torch.Tensor], targets: int) -> int:
    """Codebook fusion + pixel decoder for `targets` targets on one image."""
    s, size = model.config.settings, model.config.image_size
    hidden = meta_zeros(targets, model.config.group_size, model.llava.config.text_config.hidden_size)
    target_image = meta_zeros(targets, dtype=torch.long)

    def branch():
        return model.decoder(model.codebook(hidden), scales, target_image, (size // 4, size // 4),
                             images=meta_zeros(1, 3, size, size) if s.decoder.conv_stem else None)

    return count_flops(branch)[0]


def measure(preset: str, text_tokens: int = 64, pool: int | None = None) -> Report:
    """All the numbers of one preset; `pool` defaults to half the image grid side (12 for 336/14)."""
    model, llava_params = build_meta_model(preset)
    params, trainable = count_parameters(model)
    grid = model.config.image_size // model.llava.config.vision_config.patch_size
    image_tokens, pool = grid * grid, pool or grid // 2
    tower, projector, scales = vision_flops(model)
    one = mask_flops(model, scales, 1)
    flops = {
        "vision": tower, "projector": projector,
        "prefill": prefill_flops(model, image_tokens + text_tokens),
        "prefill_pooled": prefill_flops(model, pool * pool + text_tokens),
        "mask": one, "mask_extra": mask_flops(model, scales, 2) - one,
    }
    return Report(preset, model, llava_params, params, trainable, flops, image_tokens, pool * pool, text_tokens)


# ----------------------------------------------------------------------------- printing


def human_flops(n: float) -> str:
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6)):
        if n >= scale:
            return f"{n / scale:8.3f} {unit}"
    return f"{n:8.0f} FLOPs"


def format_report(r: Report) -> str:
    size, side = r.model.config.image_size, int(r.pooled_tokens ** 0.5)
    lines = [f"PixelLM {r.preset}: parameters (meta build, no weights)",
             f"{'component':<24}{'parameters':>16}{'':>10}{'trainable':>16}"]
    for part in (*COMPONENTS, "total"):
        label = "total / trainable total" if part == "total" else part
        lines.append(f"{label:<24}{r.params[part]:>16,}{r.params[part] / 1e6:>9.2f}M{r.trainable[part]:>16,}")
    ours = sum(r.params[p] for p in OURS)
    reference = r.llava_params + ours
    lines.append(f"{LLAVA_NAMES[r.preset]} (same meta LLaVA, before LoRA) {r.llava_params:,} + ours "
                 f"(codebook+decoder+LoRA) {ours:,} = {reference:,}; total differs by "
                 f"{100 * (r.params['total'] - reference) / reference:+.4f}%")
    f = r.flops
    rows = [
        (f"(a) vision: CLIP tower, one {size}x{size} image, all hidden states", f["vision"]),
        (f"    projector ({r.image_tokens} tokens)", f["projector"]),
        (f"(b) LLM prefill: {r.image_tokens} image + {r.text_tokens} text tokens", f["prefill"]),
        (f"    LLM prefill: {r.pooled_tokens} image ({side}x{side} pool) + {r.text_tokens} text", f["prefill_pooled"]),
        ("(c) mask branch, first target (codebook fusion + decoder)", f["mask"]),
        ("    mask branch, each further target on the same image", f["mask_extra"]),
        ("query total, unpooled (a + projector + b + c)", f["vision"] + f["projector"] + f["prefill"] + f["mask"]),
        ("query total, pooled", f["vision"] + f["projector"] + f["prefill_pooled"] + f["mask"]),
    ]
    lines += ["", "FLOPs per query (FlopCounterMode on meta: matmul/conv/attention, 2 per MAC; attention dense)"]
    lines += [f"{label:<66}{human_flops(n)}" for label, n in rows]
    lines.append(f"prefill FLOPs pooled / unpooled: {f['prefill_pooled'] / f['prefill']:.3f} "
                 f"(unpooled / pooled: {f['prefill'] / f['prefill_pooled']:.2f}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="pixellm-7b")
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens in the prefill")
    parser.add_argument("--pool", type=int, default=None,
                        help="side of the pooled image-token grid (default: half the grid, 12 for CLIP-L/336)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    report = measure(args.preset, args.text_tokens, args.pool)
    print(format_report(report))
    print(f"({time.perf_counter() - start:.1f} s)")
    return report


if __name__ == "__main__":
    main()
