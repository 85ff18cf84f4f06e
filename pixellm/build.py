"""Building a PixelLM: from a preset or a llava-hf checkpoint, LoRA set-up, save and load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from huggingface_hub import load_torch_model, save_torch_model
from peft import LoraConfig, TrainableTokensConfig, inject_adapter_in_model
from transformers import (
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerBase,
)
from transformers.initialization import no_init_weights
from transformers.utils import is_flash_attn_2_available

from .config import Config, ConfigError, ModelConfig, build_dataclass
from .constants import seg_token_strings
from .conversation import ChatTemplate
from .modeling.conv_stem import install_conv_patch_embedding
from .modeling.pixellm import PixelLM, PixelLMConfig
from .modeling.zero3 import gathered, partitioned_modules, plain_adapter_setup, zero3_build
from .presets import DEFAULT_CHECKPOINTS, PRESETS
from .tokenization import add_codebook_tokens, build_tiny_tokenizer, ensure_image_token

CONFIG_NAME = "pixellm_config.json"


def resolve_attn_implementation(
    setting: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> str:
    """`auto` -> flash_attention_2 on CUDA in half precision (bf16/fp16, the only dtypes it
    accepts) when flash-attn is installed, else PyTorch SDPA. `dtype` None means fp32."""
    if setting != "auto":
        return setting
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    half = dtype in (torch.bfloat16, torch.float16)
    return "flash_attention_2" if on_cuda and half and is_flash_attn_2_available() else "sdpa"


def load_llava(
    cfg: ModelConfig, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
    partitioned: bool = False,
) -> tuple[LlavaForConditionalGeneration, PreTrainedTokenizerBase]:
    """A pretrained llava-hf checkpoint (hub id or folder) and its tokenizer, loaded unchanged:
    its aligned projector is kept. Only the path differs between a tiny test and the 7B model.
    The weights are read in `dtype` (no fp32 copy first). partitioned: a ZeRO-3 config is active
    (`zero3_build`): transformers loads each rank's shard only, onto the rank's device."""
    path = cfg.llava_path or DEFAULT_CHECKPOINTS.get(cfg.preset)
    if path is None:
        raise ConfigError(f"model.llava_path is required for preset {cfg.preset!r}")
    check_llava_folder(path)
    dtype = dtype or torch.float32
    llava = LlavaForConditionalGeneration.from_pretrained(
        path, dtype=dtype, attn_implementation=resolve_attn_implementation(cfg.attn_implementation, device, dtype)
    )
    return (llava if partitioned else llava.to(device)), AutoTokenizer.from_pretrained(path)


def check_llava_folder(path: str | Path) -> None:
    """A local `model.llava_path` must be a llava-hf checkpoint (config.json with model_type
    "llava"); anything else is a ConfigError saying what was found, before any weight is read
    (transformers would otherwise build a default-size model for a folder it does not know).
    Hub ids (no such local folder) are left to transformers."""
    folder = Path(path)
    if not folder.is_dir():
        if folder.exists() or str(path).startswith((".", "/", "~")):
            raise ConfigError(f"model.llava_path={path}: no such folder")
        return  # a hub id
    if (folder / CONFIG_NAME).is_file():
        raise ConfigError(f"model.llava_path={path} is an exported PixelLM model, not a llava-hf checkpoint: "
                          f"to fine-tune it, set model.init_from: {path}")
    config = folder / "config.json"
    if not config.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:6]) or "nothing"
        raise ConfigError(f"model.llava_path={path} is not a llava-hf checkpoint: no config.json (found {found})")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError(f"model.llava_path={path}: config.json is not a JSON object") from None
    if model_type != "llava":
        raise ConfigError(f"model.llava_path={path} holds a {model_type!r} model, not a llava-hf LLaVA checkpoint "
                          "(model_type 'llava', e.g. llava-hf/llava-1.5-7b-hf)")


def is_random_tiny(cfg: ModelConfig) -> bool:
    """Built by `random_tiny_llava` (the tiny preset without a checkpoint), not loaded."""
    return cfg.preset == "tiny" and cfg.llava_path is None


def random_tiny_llava(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype | None = None
) -> LlavaForConditionalGeneration:
    """A random LLaVA of the tiny preset's sizes for `tokenizer` (seed torch before calling)."""
    image_id = ensure_image_token(tokenizer)
    # room for the codebook tokens added after this
    vocab = len(tokenizer) + cfg.num_scales * cfg.tokens_per_scale
    llava_cfg = PRESETS["tiny"](cfg, vocab_size=vocab, image_token_id=image_id)
    attn = resolve_attn_implementation(cfg.attn_implementation, dtype=dtype)
    llava = LlavaForConditionalGeneration._from_config(llava_cfg, attn_implementation=attn)
    if cfg.tiny.vision_conv_stem:
        install_conv_patch_embedding(llava.model.vision_tower)
    return llava


def build_pixellm(
    cfg: ModelConfig,
    *,
    llava: LlavaForConditionalGeneration | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    ds_config: dict | None = None,
) -> PixelLM:
    """A trainable PixelLM: tokens added and checked, embeddings resized, LoRA injected.

    With no `llava`: the random tiny preset (in-memory tokenizer) when `cfg.preset == "tiny"` and
    no `llava_path` is set, else the llava-hf checkpoint at `cfg.llava_path` (or the preset's),
    read directly in `dtype`.
    ds_config: the filled DeepSpeed config of the training run. Under ZeRO-3 the checkpoint is
    loaded partitioned over the ranks and the codebook fusion and pixel decoder are built
    partitioned, so no rank ever holds the whole model (call it on every rank, after
    `deepspeed.init_distributed`).
    """
    if cfg.init_from is not None:
        return load_for_finetuning(cfg, device=device, dtype=dtype)
    with zero3_build(ds_config) as hf_zero3:
        partitioned = hf_zero3 is not None
        if llava is None:
            if is_random_tiny(cfg):
                tokenizer = tokenizer or build_tiny_tokenizer()
                llava = random_tiny_llava(cfg, tokenizer, dtype)
            else:
                llava, tokenizer = load_llava(cfg, device=device, dtype=dtype, partitioned=partitioned)
        elif tokenizer is None:
            raise ValueError("pass the tokenizer that goes with `llava`")
        config = _make_config(cfg, llava, tokenizer)
        _init_new_token_rows(llava, config.seg_token_ids)
        with partitioned_modules(ds_config):
            model = PixelLM(config=config, llava=llava)
        with plain_adapter_setup(hf_zero3, [model.language_model.get_input_embeddings().weight, model.lm_head.weight]):
            setup_trainable(model)
    model.tokenizer = tokenizer
    model.hf_zero3_config = hf_zero3  # transformers keeps only a weak reference to it (zero3_build)
    if partitioned:
        return model  # zero.Init put each shard on this rank's device, in the training dtype
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def _make_config(cfg: ModelConfig, llava: LlavaForConditionalGeneration, tokenizer) -> PixelLMConfig:
    config = make_pixellm_config(cfg, llava.config, tokenizer)
    if len(tokenizer) > llava.get_input_embeddings().num_embeddings:
        llava.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return config


def make_pixellm_config(cfg: ModelConfig, llava_config: LlavaConfig, tokenizer) -> PixelLMConfig:
    """The PixelLM config for a LLaVA config and its tokenizer: the codebook tokens are added to
    `tokenizer` and checked; the image size and image-token count follow the vision tower."""
    tokens = seg_token_strings(cfg.num_scales, cfg.tokens_per_scale)
    seg_ids = add_codebook_tokens(tokenizer, tokens)
    image_id = ensure_image_token(tokenizer)
    if image_id != llava_config.image_token_id:
        raise ConfigError(
            f"the tokenizer's <image> id {image_id} differs from the model's image_token_id "
            f"{llava_config.image_token_id}: tokenizer and checkpoint do not belong together"
        )
    vc = llava_config.vision_config
    image_size = cfg.image_size or vc.image_size
    if image_size % vc.patch_size or image_size % 4:
        raise ConfigError(f"model.image_size={image_size} must be a multiple of the patch size {vc.patch_size} and of 4")
    grid = image_size // vc.patch_size
    return PixelLMConfig(
        settings=cfg, llava=llava_config.to_dict(), seg_tokens=tokens, seg_token_ids=seg_ids,
        image_token_id=image_id, image_size=image_size,
        num_image_tokens=(cfg.image_token_pool or grid) ** 2,
        template=_template(cfg),
    )


def _template(cfg: ModelConfig) -> ChatTemplate:
    """LLaVA-1.5's template, with the configured system prompt and image placement."""
    system = {} if cfg.system_prompt is None else {"system": cfg.system_prompt}
    return ChatTemplate(question_first=cfg.question_first, **system)


@torch.no_grad()
def _init_new_token_rows(llava: LlavaForConditionalGeneration, ids: list[int]) -> None:
    """Start each codebook row (input and output embedding) at the mean of the pre-existing rows
    (under ZeRO-3 on the gathered weights, written by rank 0 and re-partitioned)."""
    first = min(ids)
    weights = [llava.get_input_embeddings().weight, llava.get_output_embeddings().weight]
    with gathered(weights):
        for weight in weights:
            if weight.device.type != "meta":
                weight[ids] = weight[:first].float().mean(0).to(weight.dtype)


def lora_target_regex(targets: list[str]) -> str:
    """Adapters go on the LLM's layers only: never on CLIP (which has q_proj too) or the projector."""
    return rf"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(targets)})"


def setup_trainable(model: PixelLM) -> None:
    """The one place that decides what trains.

    Trainable: LoRA adapters on the LLM, the codebook rows of the input and output embeddings
    (peft trainable tokens), the codebook fusion and the pixel decoder; the vision tower only
    when `train_vision`; with `train_llm` the whole LLM and LM head instead of adapters.
    Frozen: everything else (CLIP, projector, LLM base weights).
    """
    s = model.config.settings
    ids = model.config.seg_token_ids
    model.requires_grad_(False)
    if s.train_llm:  # a random LLM learns from scratch: every weight trains, no adapters
        model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
        model.projector.requires_grad_(True)
    else:
        if s.lora.enabled:
            peft_cfg = LoraConfig(
                r=s.lora.r, lora_alpha=s.lora.alpha, lora_dropout=s.lora.dropout,
                target_modules=lora_target_regex(s.lora.target_modules),
                trainable_token_indices={"embed_tokens": ids, "lm_head": ids},
            )
        else:
            peft_cfg = TrainableTokensConfig(target_modules=["embed_tokens", "lm_head"], token_indices=ids)
        inject_adapter_in_model(peft_cfg, model.llava)
    model.codebook.requires_grad_(True)
    model.decoder.requires_grad_(True)
    if s.train_vision:
        model.vision_tower.requires_grad_(True)


def text_processor(cfg: Config):
    """The processor a training run of `cfg` would use (tokenizer with the codebook tokens,
    chat template, image-token count, data.max_length), without building the model: reads the
    checkpoint's config and tokenizer only (for token statistics, `validate-data --config`)."""
    from .processor import PixelLMProcessor

    m = cfg.model
    if m.init_from is not None:
        saved = read_config(m.init_from)
        tokenizer = AutoTokenizer.from_pretrained(m.init_from)
        return PixelLMProcessor(tokenizer=tokenizer, config=saved, max_length=cfg.data.max_length)
    if is_random_tiny(m):
        tokenizer = build_tiny_tokenizer()
        image_id = ensure_image_token(tokenizer)
        llava_config = PRESETS["tiny"](m, vocab_size=len(tokenizer) + m.num_scales * m.tokens_per_scale,
                                       image_token_id=image_id)
    else:
        path = m.llava_path or DEFAULT_CHECKPOINTS.get(m.preset)
        check_llava_folder(path)
        tokenizer, llava_config = AutoTokenizer.from_pretrained(path), LlavaConfig.from_pretrained(path)
    return PixelLMProcessor(tokenizer=tokenizer, config=make_pixellm_config(m, llava_config, tokenizer),
                            max_length=cfg.data.max_length)


def fold_adapters(model: PixelLM) -> PixelLM:
    """Merge LoRA and the trained codebook rows into the base weights and remove every peft
    wrapper, in place: the LLaVA inside is plain again, ready for `setup_trainable` with other
    settings (settings are left as they were)."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from peft.utils import TrainableTokensWrapper

    replaced: list[str] = []
    with torch.no_grad():
        for name, module in list(model.llava.named_modules()):
            if any(name.startswith(p + ".") for p in replaced):
                continue  # inside a wrapper already folded
            if isinstance(module, (LoraLayer, TrainableTokensLayer)):  # LoRA, or codebook rows without LoRA
                module.merge()
                plain = module.get_base_layer()
            elif isinstance(module, TrainableTokensWrapper):  # codebook rows next to LoRA
                plain = module.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
            else:
                continue
            _set_child(model.llava, name, plain)
            replaced.append(name)
    if hasattr(model.llava, "peft_config"):
        del model.llava.peft_config  # the old adapters are gone; peft must not stack new ones on them
    return model


def _set_child(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def load_for_finetuning(cfg: ModelConfig, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> PixelLM:
    """`model.init_from`: an exported PixelLM (weights, tokenizer, codebook, decoder) to train
    further. Its saved architecture is kept; what trains (lora, train_llm, train_vision) comes
    from `cfg`. Adapters it was saved with are merged first, so new ones
    start at zero and the first forward equals the exported model's. Loaded whole on every rank
    (ZeRO-3 partitions it at deepspeed.initialize)."""
    path = Path(cfg.init_from)
    if not (path / CONFIG_NAME).is_file():
        what = "no such folder" if not path.is_dir() else f"no {CONFIG_NAME} (export one with `pixellm export`)"
        raise ConfigError(f"model.init_from={path}: not an exported PixelLM model: {what}")
    model = load_pixellm(path, device=device, dtype=dtype)
    fold_adapters(model)
    settings = dataclasses.replace(
        model.config.settings, lora=cfg.lora, train_llm=cfg.train_llm, train_vision=cfg.train_vision,
        init_from=str(path),
    )
    model.config = dataclasses.replace(model.config, settings=settings)
    setup_trainable(model)
    model.hf_zero3_config = None
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def save_pixellm(model: PixelLM, path: str | Path, *, weights: bool = True) -> None:
    """Config-complete folder: pixellm_config.json, safetensors weights, tokenizer.
    weights=False writes the architecture and tokenizer only (a training run's model/ folder)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.asdict(model.config)
    (path / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, default=str))
    if weights:
        save_torch_model(model, path, max_shard_size="5GB")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(path)


def read_config(path: str | Path) -> PixelLMConfig:
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: not a pixellm model folder (save one with save_pretrained)")
    raw = json.loads(file.read_text())
    raw["settings"] = build_dataclass(ModelConfig, raw["settings"], "settings")
    raw["template"] = ChatTemplate(**raw["template"])
    return PixelLMConfig(**raw)


def build_skeleton(
    config: PixelLMConfig, tokenizer_dir: str | Path, *, device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> PixelLM:
    """The saved architecture with uninitialised weights (to be loaded), and its tokenizer.
    `dtype` is the precision the weights will be used in (it chooses the attention kernel)."""
    llava_cfg = LlavaConfig.from_dict(config.llava)
    with no_init_weights():
        llava = LlavaForConditionalGeneration._from_config(
            llava_cfg, attn_implementation=resolve_attn_implementation(config.settings.attn_implementation, device, dtype)
        )
    if is_random_tiny(config.settings) and config.settings.tiny.vision_conv_stem:  # as random_tiny_llava built it
        install_conv_patch_embedding(llava.model.vision_tower)
    model = PixelLM(config=config, llava=llava)
    setup_trainable(model)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = [tok.convert_tokens_to_ids(t) for t in config.seg_tokens]
    if ids != config.seg_token_ids:
        raise ConfigError(f"{tokenizer_dir}: tokenizer maps {config.seg_tokens} to {ids}, the config says {config.seg_token_ids}")
    model.tokenizer = tok
    return model


def load_pixellm(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> PixelLM:
    """Rebuild a saved PixelLM from its folder alone: no flags, no hub access."""
    model = build_skeleton(read_config(path), path, device=device, dtype=dtype)
    load_torch_model(model, path, strict=True)
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
