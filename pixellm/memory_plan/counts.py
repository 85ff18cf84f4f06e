"""The model `pixellm plan-memory` plans for: the config's PixelLM built on the meta device at
full depth, and its parameter counts (which exist, their sizes and order, which train)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch & co. load when a function runs, not with the parser
    import torch

    from ..config import ModelConfig
    from ..modeling.pixellm import PixelLM

GB = 1e9
STAGES = ("zero2", "zero3", "zero3_offload")
ADAM_MOMENTS = 2  # torch.optim.AdamW keeps exp_avg and exp_avg_sq, each shaped like its parameter
STEP_BYTES = 4  # and an fp32 scalar `step` per parameter: DeepSpeed's flat groups have one each
FP32 = 4  # master weights, Adam moments and the gradients the optimizer reads are fp32


def _gb(n: int) -> float:
    return round(n / GB, 3)

@dataclass(frozen=True)
class ParamInfo:
    """One parameter of the model, in `model.named_parameters()` order (the order DeepSpeed flattens
    and partitions them in)."""

    name: str
    numel: int
    trainable: bool


@dataclass(frozen=True)
class ModelCounts:
    """What the planner needs from the model: its parameters and ZeRO-3's fetch units (the
    parameters a module gathers when it runs: its own, plus the external ones registered on it)."""

    preset: str
    params: tuple[ParamInfo, ...]
    fetch_units: tuple[tuple[str, ...], ...]  # parameter names gathered together by one module

    @property
    def total(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def trainable(self) -> int:
        return sum(p.numel for p in self.params if p.trainable)


def build_meta_model(cfg: ModelConfig, dtype: torch.dtype) -> PixelLM:
    """The PixelLM that training builds for `cfg`, on the meta device and in `dtype`.

    The random tiny preset goes through build.py's own path (its in-memory tokenizer decides the
    vocabulary); a local `model.llava_path` folder gives its config.json and its tokenizer (the
    codebook ids and any embedding resize, as training's load); otherwise the 7B/13B presets use
    the llava-hf architecture of presets.py with the llava-hf tokenizer's ids: `<image>` = 32000,
    `<pad>` = 32001, the codebook tokens right after (as benchmarks/model_size.py does)."""
    import torch
    from transformers.initialization import no_init_weights

    from ..build import build_pixellm, is_random_tiny, random_tiny_llava, setup_trainable
    from ..modeling.pixellm import PixelLM
    from ..tokenization import build_tiny_tokenizer

    with _plain_transformers(), torch.device("meta"), no_init_weights():
        if is_random_tiny(cfg):
            tokenizer = build_tiny_tokenizer()
            llava = random_tiny_llava(cfg, tokenizer)
            model = build_pixellm(cfg, llava=llava, tokenizer=tokenizer, device="meta")
        elif _local_folder(cfg):  # its own tokenizer decides the ids, as training's load does
            from transformers import AutoTokenizer

            from ..build import _make_config

            llava = _meta_llava(cfg)
            tokenizer = AutoTokenizer.from_pretrained(cfg.llava_path)
            model = PixelLM(config=_make_config(cfg, llava, tokenizer), llava=llava)
            setup_trainable(model)
        else:
            llava = _meta_llava(cfg)
            model = PixelLM(config=_llava_hf_config(cfg, llava), llava=llava)
            setup_trainable(model)
    return model.to(dtype)


@contextmanager
def _plain_transformers() -> Iterator[None]:
    """No ZeRO-3 for the meta build, even when a ZeRO-3 run lives in this process (its
    HfDeepSpeedConfig would make transformers partition the meta weights as they are built)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    active = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = active


def _local_folder(cfg: ModelConfig) -> bool:
    return bool(cfg.llava_path) and (Path(cfg.llava_path) / "config.json").is_file()


def _meta_llava(cfg: ModelConfig):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from ..presets import PRESETS

    llava_cfg = (
        LlavaConfig.from_pretrained(cfg.llava_path) if _local_folder(cfg) else PRESETS[cfg.preset](cfg)
    )
    return LlavaForConditionalGeneration._from_config(llava_cfg, attn_implementation="sdpa")


def _llava_hf_config(cfg: ModelConfig, llava):
    """build._make_config's result with the llava-hf tokenizer: codebook ids right after <pad>."""
    from ..constants import seg_token_strings
    from ..modeling.pixellm import PixelLMConfig
    from ..presets import LLAVA_HF_IMAGE_TOKEN_ID

    tokens = seg_token_strings(cfg.num_scales, cfg.tokens_per_scale)
    first = LLAVA_HF_IMAGE_TOKEN_ID + 2
    vision = llava.config.vision_config
    size = cfg.image_size or vision.image_size
    return PixelLMConfig(
        settings=cfg,
        llava=llava.config.to_dict(),
        seg_tokens=tokens,
        seg_token_ids=list(range(first, first + len(tokens))),
        image_token_id=LLAVA_HF_IMAGE_TOKEN_ID,
        image_size=size,
        num_image_tokens=(cfg.image_token_pool or size // vision.patch_size) ** 2,
    )


def count_model(model: torch.nn.Module, preset: str) -> ModelCounts:
    """Parameters in `named_parameters()` order, and ZeRO-3's fetch units: each module's own
    parameters, plus, for peft's trainable-token layers, the base weight and the delta rows that
    training/setup.py registers on them as external parameters (they are gathered together)."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    names = {id(p): n for n, p in model.named_parameters()}
    params = tuple(ParamInfo(n, p.numel(), p.requires_grad) for n, p in model.named_parameters())
    units = []
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, TrainableTokensLayer):
            own += [module.base_layer.weight, *module.trainable_tokens_delta.values()]
        if own:
            units.append(tuple(dict.fromkeys(names[id(p)] for p in own)))
    return ModelCounts(preset, params, tuple(units))


# ----------------------------------------------------------------------------- DeepSpeed settings
