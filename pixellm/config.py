"""Typed configuration: dataclass schema, YAML files with one level of `base:`, dotted overrides.

YAML files hold values only. Every key is checked against the schema: an unknown key or a value
of the wrong type is a `ConfigError` that names the dotted key (and the file it came from).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


def _at_least(prefix: str, **values: tuple[float, float]) -> None:
    """ConfigError naming the dotted key of the first value below its minimum:
    `_at_least("train", batch_size=(cfg.batch_size, 1))`."""
    for key, (value, low) in values.items():
        if value < low:
            raise ConfigError(f"{prefix}.{key} must be >= {low:g}, got {value}")


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """A dataclass field carrying help text (shown by `pixellm config --help`-style tooling)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TinySizes:
    """Sizes of the random `tiny` preset (ignored by the pretrained presets)."""

    hidden_size: int = _help("LLM width.", 64)
    num_layers: int = _help("LLM decoder layers.", 2)
    num_heads: int = _help("LLM attention heads.", 4)
    intermediate_size: int = _help("LLM MLP width.", 128)
    vision_hidden_size: int = _help("CLIP width.", 64)
    vision_layers: int = _help("CLIP encoder layers.", 3)
    vision_heads: int = _help("CLIP attention heads.", 4)
    patch_size: int = _help("CLIP patch size in pixels.", 8)
    vision_conv_stem: bool = _help("Add a stride-2 conv stem to CLIP's patchify layer (modeling/conv_stem.py).", False)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.vision_hidden_size % self.vision_heads:
            raise ConfigError("model.tiny: hidden sizes must be divisible by their head counts")


@dataclass
class LoraSettings:
    """LoRA on the LLM only (peft). CLIP and the projector stay frozen."""

    enabled: bool = _help("Wrap the LLM's projections with LoRA adapters.", True)
    r: int = _help("LoRA rank.", 8)
    alpha: int = _help("LoRA alpha (scaling = alpha / r).", 16)
    dropout: float = _help("Dropout on the LoRA input.", 0.05)
    target_modules: list[str] = _help(
        "Leaf names of the LLM's linear layers that get adapters.",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"model.lora.r must be positive, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DecoderSettings:
    """The light pixel decoder (no SAM)."""

    dim: int = _help("Width of the two-way attention blocks.", 256)
    depth: int = _help("Two-way blocks per scale.", 2)
    heads: int = _help("Attention heads.", 8)
    mlp_dim: int = _help("MLP width inside a two-way block.", 2048)
    conv_stem: bool = _help("Add a light conv stem on the raw image to the finest scale.", False)
    stem_dim: int = _help("Channels of the conv stem.", 32)

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"model.decoder.dim={self.dim} is not divisible by heads={self.heads}")


@dataclass
class ModelConfig:
    preset: Literal["tiny", "pixellm-7b", "pixellm-13b"] = _help("Model preset (presets.py).", "pixellm-7b")
    llava_path: str | None = _help(
        "LLaVA-1.5 checkpoint (hub id or folder) in the llava-hf layout; None = the preset's default.",
        None,
    )
    init_from: str | None = _help(
        "An exported PixelLM folder (`pixellm export`) to fine-tune: its weights, tokenizer, codebook "
        "and decoder, and its architecture (the saved one wins over this section's); what trains (lora, "
        "train_llm, train_vision) comes from this config, with a fresh optimizer and schedule.", None)
    num_scales: int = _help("Codebook scales L.", 2)
    tokens_per_scale: int = _help("Codebook tokens per scale N.", 3)
    decoder_layers: list[int] = _help(
        "CLIP hidden-state indices feeding the decoder, coarsest scale first.", factory=lambda: [-2, 14]
    )
    llm_feature_layer: int = _help("CLIP hidden-state index feeding the LLM (LLaVA uses -2).", -2)
    image_size: int | None = _help("Square input size; None = the vision tower's own size.", None)
    image_token_pool: int | None = _help("Average-pool the projected image grid to this side.", None)
    train_vision: bool = _help("Train the vision tower (only sensible for random presets).", False)
    train_llm: bool = _help("Train every LLM and projector weight instead of LoRA (only sensible for random presets).", False)
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = _help(
        "LLM attention kernel; auto = flash_attention_2 on CUDA when installed, else sdpa.", "auto"
    )
    system_prompt: str | None = _help("Chat system prompt; None = LLaVA-1.5's own.", None)
    question_first: bool = _help(
        "Put the image after the question so image tokens see it (models trained from scratch only).", False)
    query_window: int = _help(
        "W > 1 adds the mean last-layer state of the W positions before each codebook group to every "
        "state of the group (1 = the states that predict the codebook tokens alone, as in "
        "PixelLM/LISA): the phrase's own words then reach every decoder scale.", 1)
    lora: LoraSettings = _help("LoRA settings.", factory=LoraSettings)
    decoder: DecoderSettings = _help("Pixel decoder settings.", factory=DecoderSettings)
    tiny: TinySizes = _help("Sizes of the tiny preset.", factory=TinySizes)

    def __post_init__(self) -> None:
        if self.num_scales < 1 or self.tokens_per_scale < 1:
            raise ConfigError("model.num_scales and model.tokens_per_scale must be >= 1")
        if len(self.decoder_layers) != self.num_scales:
            raise ConfigError(
                f"model.decoder_layers has {len(self.decoder_layers)} entries but "
                f"model.num_scales={self.num_scales}: one CLIP layer per codebook scale"
            )
        if self.image_token_pool is not None and self.image_token_pool < 1:
            raise ConfigError("model.image_token_pool must be >= 1 or null")
        if self.query_window < 1:
            raise ConfigError(f"model.query_window must be >= 1, got {self.query_window}")


@dataclass
class SourceConfig:
    """One dataset in the training mixture or evaluation list."""

    type: Literal["synthetic", "custom", "muse", "refer", "grefcoco", "vqa", "semseg", "reasonseg"] = _help(
        "Loader to use.", "custom"
    )
    weight: float = _help("Sampling weight in the mixture.", 1.0)
    annotations: str | None = _help("Annotation file (custom, muse, vqa).", None)
    image_root: str | None = _help("Folder that image paths resolve against.", None)
    root: str | None = _help("Root folder (refer, grefcoco, semseg; reasonseg: the folder holding train/ val/ test/).", None)
    name: str | None = _help("REFER dataset name, e.g. refcoco, or semseg layout.", None)
    split_by: str | None = _help("REFER split-by, e.g. unc, umd, google.", None)
    split: str = _help("Split name.", "train")

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"data source weight must be >= 0, got {self.weight}")


@dataclass
class SyntheticSettings:
    """The synthetic shapes task, generated on first use (pixellm make-synthetic)."""

    dir: str = _help("Where the task is generated (regenerated if these settings change).", "outputs/synthetic")
    num_train: int = _help("Training images (3 questions each).", 4000)
    num_val: int = _help("Validation images.", 100)
    num_compositional: int = _help("Held-out colour-shape pair images.", 100)
    num_vqa: int = _help("Images of the text-only `vqa` split (every colour-shape pair, no masks).", 0)
    image_size: int = _help("Image side in pixels.", 64)
    seed: int = _help("Generation seed.", 0)


@dataclass
class DataConfig:
    train: list[SourceConfig] = _help("Training mixture.", factory=list)
    val: list[SourceConfig] = _help("Validation sets.", factory=list)
    max_length: int = _help("Token budget per row (image tokens included).", 512)
    num_workers: int = _help("DataLoader workers.", 2)
    seed: int = _help("Mixture sampling seed.", 0)
    leak_check: list[str] = _help(
        "Evaluation splits (evaluate.py --dataset names) whose images are looked for in the training "
        "mixture before training (pixellm/data/leaks.py); absent ones are reported.", factory=list)
    leak_check_root: str = _help("Data root the leak_check names resolve under.", "data")
    exclude_eval_images: bool = _help("Drop training records whose image is in a leak_check split.", False)
    synthetic: SyntheticSettings = _help("Synthetic task settings.", factory=SyntheticSettings)

    def __post_init__(self) -> None:
        _at_least("data", max_length=(self.max_length, 16), num_workers=(self.num_workers, 0))


@dataclass
class LossWeights:
    ce: float = _help("Text cross-entropy weight.", 1.0)
    bce: float = _help("Mask BCE weight (with target refinement weighting).", 2.0)
    dice: float = _help("Mask Dice weight.", 0.5)
    refine_alpha: float = _help("Pixel weight where >= 2 predicted masks of a question overlap.", 2.0)
    region_words: float = _help(
        "Region-word loss weight: image tokens under a target mask predict the words naming it "
        "(pixellm/region_words.py); 0 = off.", 0.0)
    region_words_layer: int = _help("LLM layer whose image-token states the region-word loss reads "
                                    "(0 = embeddings, -1 = last).", -1)


@dataclass
class TrainConfig:
    output_dir: str = _help("Run folder (checkpoints, logs).", "outputs/run")
    seed: int = _help("Random seed.", 0)
    lr: float = _help("Peak learning rate.", 3e-4)
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    betas: list[float] = _help("AdamW betas.", factory=lambda: [0.9, 0.95])
    batch_size: int = _help("Micro-batch size per device.", 2)
    grad_accum: int = _help("Gradient accumulation steps.", 1)
    max_steps: int = _help("Optimizer steps.", 1000)
    warmup_steps: int = _help("Linear warm-up steps.", 100)
    schedule: Literal["linear", "cosine", "constant"] = _help("Decay after warm-up.", "linear")
    clip_grad: float = _help("Gradient-norm clipping (0 = off).", 1.0)
    precision: Literal["auto", "bf16", "fp32"] = _help("auto = bf16 on CUDA, fp32 on CPU.", "auto")
    gradient_checkpointing: bool = _help("Checkpoint LLM activations.", False)
    optimizer: Literal["torch", "deepspeed"] = _help(
        "torch = PyTorch's AdamW through DeepSpeed (fused kernel on CUDA when the optimizer states stay "
        "on the GPU; nothing to compile); deepspeed = the optimizer the DeepSpeed JSON names as DeepSpeed "
        "builds it (FusedAdam on GPU, DeepSpeedCPUAdam with optimizer offload), JIT-compiled on first "
        "use: needs the CUDA toolkit (nvcc) or a C++ compiler.", "torch")
    deepspeed: str = _help("DeepSpeed JSON config.", "ds_configs/zero2.json")
    save_every: int = _help("Checkpoint every N steps (0 = end only).", 0)
    keep_last: int = _help("Checkpoints to keep.", 2)
    resume: str | None = _help("'auto' or a checkpoint folder.", None)
    overwrite: bool = _help("Replace a non-empty output_dir (its contents are deleted); without it, and "
                            "without resume, a non-empty output_dir is refused so two runs never mix.", False)
    eval_every: int = _help("Validate every N steps (0 = off).", 0)
    log_every: int = _help("Log every N steps.", 10)
    wandb_mode: Literal["online", "offline", "disabled"] = _help("wandb mode (WANDB_MODE wins).", "disabled")
    wandb_project: str = _help("wandb project.", "pixellm")
    loss: LossWeights = _help("Loss weights.", factory=LossWeights)

    def __post_init__(self) -> None:
        _at_least("train", batch_size=(self.batch_size, 1), grad_accum=(self.grad_accum, 1),
                  max_steps=(self.max_steps, 1), warmup_steps=(self.warmup_steps, 0), lr=(self.lr, 0),
                  weight_decay=(self.weight_decay, 0), clip_grad=(self.clip_grad, 0),
                  save_every=(self.save_every, 0), keep_last=(self.keep_last, 0),
                  eval_every=(self.eval_every, 0), log_every=(self.log_every, 1))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class EvalConfig:
    output_dir: str = _help("Where predictions.jsonl and metrics.json go.", "outputs/eval")
    batch_size: int = _help("Questions per forward.", 8)
    max_new_tokens: int = _help("Generation budget per answer.", 128)
    limit_images: int | None = _help("Evaluate only the first N images of each split (None = all).", None)

    def __post_init__(self) -> None:
        _at_least("eval", batch_size=(self.batch_size, 1), max_new_tokens=(self.max_new_tokens, 1),
                  limit_images=(1 if self.limit_images is None else self.limit_images, 1))


@dataclass
class Config:
    model: ModelConfig = _help("Model.", factory=ModelConfig)
    data: DataConfig = _help("Data.", factory=DataConfig)
    train: TrainConfig = _help("Training.", factory=TrainConfig)
    eval: EvalConfig = _help("Evaluation.", factory=EvalConfig)


# ----------------------------------------------------------------------------- building


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value against a type hint; raise ConfigError naming `key`."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: null is not allowed (expected {getattr(tp, '__name__', tp)})")
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return build_dataclass(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _looks_numeric(value):
        return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string; users mean a number
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported schema type {tp}")  # a bug in the schema, not the file


def build_dataclass(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a (possibly partial) dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown key '{key}' (known: {sorted(names)})")
        kwargs[k] = _convert(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        message = str(e)
        raise ConfigError(message if prefix and message.startswith(prefix) else f"{prefix or 'config'}: {message}") from None


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_yaml_values(path: str | Path) -> dict:
    """Read a config file and its `base:` (one level deep) into one merged dict."""
    path = Path(path)
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    base_data = _read_yaml(base_path)
    if "base" in base_data:
        raise ConfigError(f"{path}: base {base_path} has its own base; inheritance is one level deep")
    return _deep_merge(base_data, data)


def parse_override(text: str) -> dict:
    """`train.lr=1e-4` -> {"train": {"lr": 0.0001}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (with `base:`), apply dotted overrides, validate against the schema."""
    values = load_yaml_values(path) if path is not None else {}
    for o in overrides or []:
        values = _deep_merge(values, parse_override(o))
    where = f" (in {path})" if path is not None else ""
    try:
        return build_dataclass(Config, values)
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from None


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass (for saving next to checkpoints)."""
    return dataclasses.asdict(cfg)
