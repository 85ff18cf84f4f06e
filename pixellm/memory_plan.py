"""`pixellm plan-memory CONFIG [overrides...] --gpus N [--gpu-mem GB] [--json]`: what fits on
your GPUs.

For each ZeRO stage (the templates zero2.json, zero3.json, zero3_offload.json in ds_configs/) it
gives, per GPU and in GB (1e9 bytes): parameters, gradients, optimizer states, activations, their
total, and whether the total fits in --gpu-mem (default 80).

Where the numbers come from:

* The model is the config's PixelLM built on the `meta` device at full depth (shapes, no weights,
  no download: presets.py gives the exact llava-hf architectures), with LoRA and the trainable
  codebook rows set up by build.py, as benchmarks/model_size.py builds it. Which parameters exist,
  their sizes, their order and which ones train all come from that model.
* The DeepSpeed config is the stage's template filled by training/ds_config.py as a GPU run fills
  it (precision auto -> bf16, PyTorch's AdamW); DeepSpeed's own config class reads its settings,
  defaults included (bucket sizes, persistence threshold, live-parameter limits, sub-groups).
* Parameter, gradient and optimizer-state bytes follow what DeepSpeed's engines allocate
  (deepspeed/runtime/zero/stage_1_and_2.py and stage3.py; see `plan_zero2` and `plan_zero3` for
  each term's formula). tests/test_plan_memory.py checks them against real one-process engines.
* Activations are the tensors autograd saves for backward, counted while the training forward of
  the meta model runs at the config's micro-batch, length and dtype (`estimate_activations`).

Building the argument parser imports nothing heavy: torch, transformers and DeepSpeed load when
the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch & co. load when a function runs, not with the parser
    import torch

    from .config import Config, ModelConfig
    from .modeling.pixellm import PixelLM

GB = 1e9
STAGES = ("zero2", "zero3", "zero3_offload")
ADAM_MOMENTS = 2  # torch.optim.AdamW keeps exp_avg and exp_avg_sq, each shaped like its parameter
STEP_BYTES = 4  # and an fp32 scalar `step` per parameter: DeepSpeed's flat groups have one each
FP32 = 4  # master weights, Adam moments and the gradients the optimizer reads are fp32


# ----------------------------------------------------------------------------- the model


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

    from .build import build_pixellm, is_random_tiny, random_tiny_llava, setup_trainable
    from .modeling.pixellm import PixelLM
    from .tokenization import build_tiny_tokenizer

    with _plain_transformers(), torch.device("meta"), no_init_weights():
        if is_random_tiny(cfg):
            tokenizer = build_tiny_tokenizer()
            llava = random_tiny_llava(cfg, tokenizer)
            model = build_pixellm(cfg, llava=llava, tokenizer=tokenizer, device="meta")
        elif _local_folder(cfg):  # its own tokenizer decides the ids, as training's load does
            from transformers import AutoTokenizer

            from .build import _make_config

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

    from .presets import PRESETS

    llava_cfg = (
        LlavaConfig.from_pretrained(cfg.llava_path) if _local_folder(cfg) else PRESETS[cfg.preset](cfg)
    )
    return LlavaForConditionalGeneration._from_config(llava_cfg, attn_implementation="sdpa")


def _llava_hf_config(cfg: ModelConfig, llava):
    """build._make_config's result with the llava-hf tokenizer: codebook ids right after <pad>."""
    from .constants import seg_token_strings
    from .modeling.pixellm import PixelLMConfig
    from .presets import LLAVA_HF_IMAGE_TOKEN_ID

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


@dataclass(frozen=True)
class ZeroSettings:
    """The settings of a filled DeepSpeed config that decide what its engine allocates, read with
    DeepSpeed's own config class (so defaults and the `stage3_*` aliases are DeepSpeed's)."""

    stage: int
    overlap_comm: bool
    contiguous_gradients: bool
    reduce_bucket_size: int
    param_persistence_threshold: int
    model_persistence_threshold: int
    max_live_parameters: int
    max_reuse_distance: int
    sub_group_size: int
    offload_optimizer: bool
    offload_param: bool
    dtype_bytes: int  # the training dtype: bf16 (2) or fp32 (4)

    @classmethod
    def from_config(cls, ds_cfg: dict) -> ZeroSettings:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        z = DeepSpeedZeroConfig(**ds_cfg.get("zero_optimization", {}))
        bf16 = bool(ds_cfg.get("bf16", {}).get("enabled")) or bool(
            ds_cfg.get("fp16", {}).get("enabled")
        )
        return cls(
            stage=int(z.stage),
            overlap_comm=bool(z.overlap_comm),
            contiguous_gradients=z.contiguous_gradients,
            reduce_bucket_size=int(z.reduce_bucket_size),
            param_persistence_threshold=int(z.param_persistence_threshold),
            model_persistence_threshold=int(z.model_persistence_threshold),
            max_live_parameters=int(z.max_live_parameters),
            max_reuse_distance=int(z.max_reuse_distance),
            sub_group_size=int(z.sub_group_size),
            offload_optimizer=_offloaded(z.offload_optimizer),
            offload_param=_offloaded(z.offload_param),
            dtype_bytes=2 if bf16 else 4,
        )


def _offloaded(offload) -> bool:
    return offload is not None and str(getattr(offload.device, "value", offload.device)) != "none"


def filled_stage_config(stage: str | Path, cfg: Config, gpus: int) -> dict:
    """The stage's DeepSpeed JSON (a name in STAGES or a path) filled as a GPU run fills it:
    train.precision "auto" is bf16 (what training/ds_config.py picks on a bf16-capable GPU), and
    the optimizer is PyTorch's AdamW with its fused kernel when the states stay on the GPU."""
    import torch

    from .training.ds_config import PACKAGE_DS_CONFIGS, fill_deepspeed_config

    path = Path(stage) if Path(stage).suffix == ".json" else PACKAGE_DS_CONFIGS / f"{stage}.json"
    train = cfg.train
    if train.precision == "auto":
        train = dataclasses.replace(train, precision="bf16")
    return fill_deepspeed_config(
        json.loads(path.read_text()), train, world_size=gpus, device=torch.device("cuda")
    )


# ----------------------------------------------------------------------------- per-stage bytes


@dataclass(frozen=True)
class Part:
    """One allocation of the engine. term: params | grads | optimizer. device: gpu | cpu.
    phase: "always" (held through the step), or for gradient buffers that are not held together,
    "backward" / "step": a term counts its "always" parts plus its larger phase. "live" marks
    ZeRO-3's gathered parameters, held while the forward and backward run."""

    term: str
    what: str
    formula: str
    bytes: int
    device: str = "gpu"
    phase: str = "always"


@dataclass
class StagePlan:
    """One ZeRO stage on one GPU: the engine's parts and the activation estimate."""

    name: str
    parts: list[Part]
    symbols: dict[str, int]
    activations: int = 0
    gpu_mem_gb: float = 80.0

    def term(self, term: str, device: str = "gpu") -> int:
        """Bytes of one term on one device: its always-held parts plus its larger phase."""
        parts = [p for p in self.parts if p.term == term and p.device == device]
        phases = {p.phase for p in parts} - {"always"}
        held = sum(p.bytes for p in parts if p.phase == "always")
        return held + max(
            (sum(p.bytes for p in parts if p.phase == ph) for ph in phases), default=0
        )

    @property
    def total(self) -> int:
        return sum(self.term(t) for t in ("params", "grads", "optimizer")) + self.activations

    @property
    def cpu_total(self) -> int:
        return sum(self.term(t, "cpu") for t in ("params", "grads", "optimizer"))

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_mem_gb * GB

    def to_dict(self) -> dict:
        return {
            "params_gb": _gb(self.term("params")),
            "grads_gb": _gb(self.term("grads")),
            "optimizer_gb": _gb(self.term("optimizer")),
            "activations_gb": _gb(self.activations),
            "total_gb": _gb(self.total),
            "fits": self.fits,
            "cpu_gb": _gb(self.cpu_total),
            "parts": [dataclasses.asdict(p) for p in self.parts],
            "symbols": self.symbols,
        }


def _gb(n: int) -> float:
    return round(n / GB, 3)


def plan_stage(counts: ModelCounts, z: ZeroSettings, gpus: int) -> StagePlan:
    """The engine's parameter, gradient and optimizer bytes per GPU for the settings' stage."""
    if z.stage == 2 and not z.offload_optimizer:
        return plan_zero2(counts, z, gpus)
    if z.stage == 3:
        return plan_zero3(counts, z, gpus)
    raise ValueError(
        f"ZeRO stage {z.stage}{' with optimizer offload' if z.offload_optimizer else ''} "
        "is not modelled (plan-memory knows ZeRO-2 and ZeRO-3, with or without offload)"
    )


def zero2_partition(counts: ModelCounts, gpus: int) -> tuple[int, int, int]:
    """(A, p, G) of DeepSpeed's ZeRO-2 (stage_1_and_2.py) for the trainable parameters.

    A = ceil(T / 2N) * 2N: the flat buffer of the T trainable elements, padded to a multiple of
        nccl_start_alignment_factor (2) x N. p = A / N: one rank's partition of it.
    G = max over ranks r of the elements of the trainable parameters that overlap rank r's
        partition [r*p, (r+1)*p) (get_partition_info): the contiguous gradient buffer
        `grads_in_partition` holds those parameters' whole gradients."""
    sizes = [p.numel for p in counts.params if p.trainable]
    align = 2 * gpus
    flat = math.ceil(sum(sizes) / align) * align
    part = flat // gpus
    largest = 0
    for rank in range(gpus):
        start, end, held, offset = rank * part, (rank + 1) * part, 0, 0
        for size in sizes:
            if start <= offset < end or offset < start < offset + size:
                held += size
            offset += size
        largest = max(largest, held)
    return flat, part, largest


def plan_zero2(counts: ModelCounts, z: ZeroSettings, gpus: int) -> StagePlan:
    """ZeRO-2 per GPU (DeepSpeedZeroOptimizer with partition_grads=True), b = training dtype bytes:

    params    = (P - T)*b + A*b      every rank holds every parameter in the training dtype; the
                                     trainable ones are views of one flat buffer of A elements
    optimizer = 4p + 2*4p + 4        the fp32 master partition, AdamW's two fp32 moments of it and
                                     its fp32 `step` scalar (single_partition_of_fp32_groups)
    grads     = G*b + max(k*R*b, p*b + [b != 4]*4p)
                G*b: the contiguous gradient partition (grads_in_partition), from the first
                reduction in backward until the step; backward: k = 2 (overlap_comm) or 1 reduce
                buckets of R = reduce_bucket_size elements (setup_buckets: allocated at full size
                on the first gradient hook, freed at the end of backward); step: the flattened copy
                of the partition's gradients (p*b) and its fp32 conversion (4p, the same tensor in
                fp32 training)
    with A, p, G from `zero2_partition`."""
    b, n_total, n_train = z.dtype_bytes, counts.total, counts.trainable
    flat, part, held = zero2_partition(counts, gpus)
    k = 2 if z.overlap_comm else 1
    buckets = k * z.reduce_bucket_size * b if z.contiguous_gradients else 0
    parts = [
        Part("params", "frozen parameters", "(P - T) * b", (n_total - n_train) * b),
        Part("params", "trainable parameters (flat, padded)", "A * b", flat * b),
        Part("optimizer", "fp32 master partition", "4 * p", FP32 * part),
        Part("optimizer", "AdamW moments", "2 * 4 * p", ADAM_MOMENTS * FP32 * part),
        Part("optimizer", "AdamW step", "4", STEP_BYTES),
        Part("grads", "gradient partition", "G * b", held * b),
        Part("grads", "reduce buckets", f"{k} * R * b", buckets, phase="backward"),
        Part("grads", "flattened gradient partition", "p * b", part * b, phase="step"),
        Part(
            "grads",
            "fp32 gradient partition",
            "[b != 4] * 4 * p",
            FP32 * part if b != FP32 else 0,
            phase="step",
        ),
    ]
    symbols = {
        "P": n_total,
        "T": n_train,
        "N": gpus,
        "b": b,
        "A": flat,
        "p": part,
        "G": held,
        "R": z.reduce_bucket_size,
    }
    return StagePlan("zero2", parts, symbols)


@dataclass(frozen=True)
class Zero3Sizes:
    """The element counts ZeRO-3's formulas use (see `plan_zero3`)."""

    shards: int  # S: sum over all parameters of ceil(numel / N)
    trainable_shards: int  # S_T: the same over the trainable ones
    persistent: int  # Q: elements of the persistent parameters (kept whole on every rank)
    live: int  # L: the gathered-parameter window
    largest_unit: int  # M: the largest fetch unit of non-persistent parameters
    largest_sub_group: int  # g
    sub_groups: int  # n_g


def zero3_sizes(counts: ModelCounts, z: ZeroSettings, gpus: int) -> Zero3Sizes:
    """Element counts of DeepSpeed's ZeRO-3 partitioning (partition_parameters.py, stage3.py):

    shard(x) = ceil(numel(x) / N) (the last rank's is padded); persistent: a parameter of at most
    stage3_param_persistence_threshold elements, in named_parameters() order while their running
    sum stays within model_persistence_threshold (mark_persistent_parameters), all of them whole
    between steps (stage3._post_step all-gathers them, used by the forward or not); sub-groups: the
    trainable shards cut each time their running sum reaches sub_group_size
    (_create_fp16_sub_groups); L = min(all non-persistent elements, max(stage3_max_live_parameters,
    stage3_max_reuse_distance) + M): prefetching stops at max_live_parameters, parameters needed
    again within max_reuse_distance elements are kept, and the module that runs fetches its own
    M elements whatever the count (partitioned_param_coordinator.py)."""
    shard = {p.name: math.ceil(p.numel / gpus) for p in counts.params}
    persistent, running = set(), 0
    for p in counts.params:
        if (
            p.numel + running <= z.model_persistence_threshold
            and p.numel <= z.param_persistence_threshold
        ):
            persistent.add(p.name)
            running += p.numel
    numel = {p.name: p.numel for p in counts.params}
    gathered = sum(p.numel for p in counts.params if p.name not in persistent)
    unit = max(
        (sum(numel[n] for n in u if n not in persistent) for u in counts.fetch_units), default=0
    )
    groups, current = [], 0
    trainable = [p for p in counts.params if p.trainable]
    for i, p in enumerate(trainable):
        current += shard[p.name]
        if current >= z.sub_group_size or i == len(trainable) - 1:
            groups.append(current)
            current = 0
    return Zero3Sizes(
        shards=sum(shard.values()),
        trainable_shards=sum(shard[p.name] for p in trainable),
        persistent=sum(numel[n] for n in persistent),
        live=min(gathered, max(z.max_live_parameters, z.max_reuse_distance) + unit),
        largest_unit=unit,
        largest_sub_group=max(groups, default=0),
        sub_groups=len(groups),
    )


def plan_zero3(counts: ModelCounts, z: ZeroSettings, gpus: int) -> StagePlan:
    """ZeRO-3 per GPU (DeepSpeedZeroOptimizer_Stage3), b = training dtype bytes, sizes from
    `zero3_sizes`:

    params    = S*b + c*Q*b + L*b    every parameter's shard; the persistent ones whole besides,
                                     c = [N > 1 or offload_param]: with one rank and the shards on
                                     the GPU the coordinator's gathers are views of the shards
                                     (NoGatherHandle); and the window of gathered parameters while
                                     forward and backward run (an upper bound; with one rank only
                                     the parameters read outside their own module's forward, which
                                     DeepSpeed gathers synchronously, are copies)
    grads     = R*b + S_T*b + g*b + [b != 4]*4g
                one IPG bucket of R = reduce_bucket_size elements (allocated at start-up), the
                trainable shards' gradient partitions (grad_partitions_flat_buffer), and in the
                step the largest sub-group's flattened gradients and their fp32 conversion
    optimizer = 4*S_T + 2*4*S_T + 4*n_g
                the fp32 master shards (a copy in fp32 training too: _create_fp32_partitions
                would reuse the parameter shards only when their torch.device equals the
                accelerator's device-name string, which never holds), AdamW's two fp32 moments,
                one fp32 `step` per sub-group

    With offload_optimizer the master shards, the moments, the gradient partitions and an fp32
    gradient buffer (4*S_T) live in CPU memory and the step runs there (no flattened copies); with
    offload_param every shard lives in CPU memory too (the persistent parameters' shards too:
    zero.Init puts them there before persistence is decided) and the GPU keeps the persistent
    parameters whole and the gathered window."""
    b, s = z.dtype_bytes, zero3_sizes(counts, z, gpus)
    copies = int(gpus > 1 or z.offload_param)  # one rank, shards on the GPU: a gather is a view
    opt_dev = "cpu" if z.offload_optimizer else "gpu"
    par_dev = "cpu" if z.offload_param else "gpu"
    parts = [
        Part("params", "parameter shards", "S * b", s.shards * b, par_dev),
        Part(
            "params",
            "persistent parameters (whole)",
            "[N > 1 or offload_param] * Q * b",
            s.persistent * b * copies,
        ),
        Part("params", "gathered parameters (live window)", "L * b", s.live * b, phase="live"),
        Part(
            "grads",
            "IPG bucket",
            "R * b",
            z.reduce_bucket_size * b if z.contiguous_gradients else 0,
        ),
        Part("grads", "gradient partitions", "S_T * b", s.trainable_shards * b, opt_dev),
        Part("optimizer", "fp32 master shards", "4 * S_T", FP32 * s.trainable_shards, opt_dev),
        Part(
            "optimizer",
            "AdamW moments",
            "2 * 4 * S_T",
            ADAM_MOMENTS * FP32 * s.trainable_shards,
            opt_dev,
        ),
        Part("optimizer", "AdamW step", "4 * n_g", STEP_BYTES * s.sub_groups, opt_dev),
    ]
    if z.offload_optimizer:
        parts.append(
            Part("grads", "fp32 gradient buffer", "4 * S_T", FP32 * s.trainable_shards, "cpu")
        )
    else:
        parts += [
            Part(
                "grads",
                "flattened sub-group gradients",
                "g * b",
                s.largest_sub_group * b,
                phase="step",
            ),
            Part(
                "grads",
                "fp32 sub-group gradients",
                "[b != 4] * 4 * g",
                FP32 * s.largest_sub_group if b != FP32 else 0,
                phase="step",
            ),
        ]
    symbols = {
        "P": counts.total,
        "T": counts.trainable,
        "N": gpus,
        "b": b,
        "S": s.shards,
        "S_T": s.trainable_shards,
        "Q": s.persistent,
        "L": s.live,
        "M": s.largest_unit,
        "g": s.largest_sub_group,
        "n_g": s.sub_groups,
        "R": z.reduce_bucket_size,
    }
    name = "zero3_offload" if (z.offload_optimizer or z.offload_param) else "zero3"
    return StagePlan(name, parts, symbols)


# ----------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class ActivationInputs:
    """What one micro-batch holds, per GPU. Rows are padded to `seq_len` (the worst case: every
    row as long as data.max_length), each row has its own image, every text position after the
    image is scored by the LM head (an upper bound: prompts are not), and each row has
    `targets_per_row` masks scored at `mask_hw` (the original image size)."""

    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    targets_per_row: int = 3
    mask_hw: tuple[int, int] = (480, 640)


VISION, EMBEDDINGS, LLM = "vision tower + projector", "embeddings", "language model"
LM_HEAD, MASKS = "LM head + cross-entropy", "codebook + pixel decoder + mask losses"


@dataclass
class ActivationEstimate:
    """Activation bytes per GPU. saved: what each part of the forward saves for backward;
    largest: the largest saved tensor; with checkpointing, layer: one decoder layer's saved
    tensors without checkpointing (the mean over the layers) and layer_largest: its largest."""

    saved: dict[str, int]
    largest: int
    layer: int = 0
    layer_largest: int = 0

    @property
    def forward_end(self) -> int:
        """When backward starts: everything saved, plus the gradient of the largest saved tensor."""
        return sum(self.saved.values()) + self.largest

    @property
    def recompute(self) -> int:
        """Checkpointing: when backward recomputes a layer, the LM head's and the mask branch's
        saved tensors are gone; the vision, embedding and LLM (layer inputs) ones remain, plus the
        recomputed layer's saved tensors and the gradient of its largest one."""
        if not self.layer:
            return 0
        kept = sum(self.saved.get(k, 0) for k in (VISION, EMBEDDINGS, LLM))
        return kept + self.layer + self.layer_largest

    @property
    def total(self) -> int:
        return max(self.forward_end, self.recompute)

    def to_dict(self) -> dict:
        return {
            "gb": _gb(self.total),
            "saved_gb": {k: _gb(v) for k, v in self.saved.items()},
            "largest_saved_gb": _gb(self.largest),
            "forward_end_gb": _gb(self.forward_end),
            "recompute_peak_gb": _gb(self.recompute),
            "one_layer_gb": _gb(self.layer),
            "formula": ACTIVATION_FORMULA,
        }


ACTIVATION_FORMULA = (
    "activations = max(forward end, recompute peak). Saved = the bytes of the tensors autograd "
    "saves for backward (once per storage, parameters excluded) while the training forward of the "
    "meta model runs: CLIP + projector (nothing when frozen), the embeddings and the LLM on B x S "
    "tokens (with checkpointing only each layer's input), the LM head + cross-entropy on "
    "B x (S - image tokens) positions, the codebook fusion, pixel decoder and BCE/Dice on "
    "B x targets masks at the original image size; attention saves what flash / memory-efficient "
    "kernels save (q, k, v, output, fp32 logsumexp; no S x S matrix). Forward end = saved + the "
    "largest saved tensor (its gradient). Recompute peak (checkpointing) = the vision, embedding "
    "and LLM saved tensors + one layer's saved tensors without checkpointing + that layer's "
    "largest tensor"
)


class _SavedTensors:
    """Counts the storages autograd saves for backward, once each, parameters and buffers out."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.excluded = {
            t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]
        }
        self.sizes: dict[int, int] = {}
        self.keep: list = []  # saved tensors stay alive until counted: storage ids are never reused

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        self.keep.append(tensor)
        if storage._cdata not in self.excluded:
            self.sizes.setdefault(storage._cdata, storage.nbytes())
        return tensor

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @contextmanager
    def counting(self) -> Iterator[None]:
        import torch

        with (
            torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t),
            _training_attention(),
        ):
            yield


@contextmanager
def _training_attention() -> Iterator[None]:
    """During the count, attention saves what the GPU kernels save (flash-attention 2 and SDPA's
    flash / memory-efficient kernels: q, k, v, the output and an fp32 logsumexp per query and head)
    rather than what PyTorch's math fallback on the meta device would (the S x S probabilities);
    transformers' packed-sequence check, which reads values, is skipped (rows are not packed)."""
    from unittest import mock

    import torch

    class FlashLike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty(*q.shape[:-1], v.shape[-1])
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

        @staticmethod
        def backward(ctx, grad):  # pragma: no cover - the count never runs backward
            raise NotImplementedError

    def attention(query, key, value, *args, **kwargs):
        return FlashLike.apply(query, key, value)

    from transformers import masking_utils

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", attention)
        )
        if hasattr(masking_utils, "find_packed_sequence_indices"):  # transformers >= 5.x only
            stack.enter_context(
                mock.patch.object(
                    masking_utils, "find_packed_sequence_indices", lambda *a, **k: None
                )
            )
        yield


def _scored(model: PixelLM, states: torch.Tensor, positions: int) -> torch.Tensor:
    """text_loss on `positions` rows of `states`: the LM head on the scored states only, fp32
    logits, cross-entropy (the selection is a gather, as the boolean indexing of text_loss is)."""
    import torch
    import torch.nn.functional as F

    flat = states.reshape(-1, states.shape[-1])
    index = torch.zeros(positions, dtype=torch.long, device=states.device)
    logits = model.lm_head(flat.index_select(0, index)).float()
    return F.cross_entropy(logits, torch.zeros(positions, dtype=torch.long, device=states.device))


def _mask_branch(
    model: PixelLM, hidden: torch.Tensor, vision, pixels: torch.Tensor, a: ActivationInputs
):
    """Codebook fusion + pixel decoder for B x targets masks, upsampled to the original size and
    scored by BCE (with refinement weights) and Dice, as PixelLM.forward and compute_losses do."""
    import torch

    from .losses import mask_losses

    rows, per_row, group = a.batch_size, a.targets_per_row, model.config.group_size
    device, size = hidden.device, model.config.image_size
    flat = hidden.reshape(-1, hidden.shape[-1])
    states = flat.index_select(
        0, torch.zeros(rows * per_row * group, dtype=torch.long, device=device)
    )
    dtype = next(model.codebook.parameters()).dtype
    target_image = torch.arange(rows, device=device).repeat_interleave(per_row)
    logits = model.decoder(
        model.codebook(states.view(rows * per_row, group, -1).to(dtype)),
        [f.to(dtype) for f in vision.scales],
        target_image,
        (size // 4, size // 4),
        images=pixels.to(dtype),
    )
    h, w = a.mask_hw
    valid = (round(h * size / max(h, w)), round(w * size / max(h, w)))
    per_image = [_postprocess(model, lg, valid, (h, w)) for lg in logits.split(per_row)]
    targets = [torch.zeros(per_row, h, w, dtype=torch.bool, device=device) for _ in per_image]
    bce, dice, _ = mask_losses(per_image, targets, 2.0)
    return bce + dice


def _postprocess(model: PixelLM, logits, valid: tuple[int, int], original: tuple[int, int]):
    from .modeling.pixel_decoder import postprocess_masks

    return postprocess_masks(logits, model.config.image_size, valid, original)


def training_forward(
    model: PixelLM,
    a: ActivationInputs,
    counter: _SavedTensors | None = None,
    region_words: bool = False,
) -> dict[str, tuple[int, int]]:
    """Run the training forward of `model` (meta or real) on a synthetic micro-batch shaped as `a`
    says, in train mode; with `counter`, returns per part (in order) the bytes it newly saved for
    backward and its largest saved tensor."""
    import torch

    from .modeling.pixellm import run_language_model

    device = next(model.parameters()).device
    rows, length, size = a.batch_size, a.seq_len, model.config.image_size
    image_tokens = model.config.num_image_tokens
    parts: dict[str, tuple[int, int]] = {}
    seen = 0

    def mark(name: str) -> None:
        nonlocal seen
        if counter is not None:
            new = list(counter.sizes.values())[seen:]
            parts[name], seen = (sum(new), max(new, default=0)), len(counter.sizes)

    pixels = torch.zeros(rows, 3, size, size, device=device)
    vision = model.encode_images(pixels)
    mark(VISION)
    ids = torch.zeros(rows, length, dtype=torch.long, device=device)
    embeds = model.language_model.get_input_embeddings()(ids)
    is_image = torch.zeros(rows, length, 1, dtype=torch.bool, device=device)
    embeds = embeds.masked_scatter(is_image, vision.llm_tokens.to(embeds.dtype))
    if not embeds.requires_grad:  # enable_input_require_grads does this under checkpointing
        embeds.requires_grad_(True)
    mark(EMBEDDINGS)
    out, _ = run_language_model(
        model.language_model,
        None,
        inputs_embeds=embeds,
        use_cache=False,
        output_hidden_states=region_words,
    )
    hidden = out.last_hidden_state
    mark(LLM)
    loss = _scored(model, hidden, rows * max(length - image_tokens, 1))
    if region_words:  # image tokens under masks predict their words: the LM head on image positions
        loss = loss + _scored(
            model, out.hidden_states[len(out.hidden_states) // 2], rows * image_tokens
        )
    mark(LM_HEAD)
    loss = loss + _mask_branch(model, hidden, vision, pixels, a)
    mark(MASKS)
    return parts


@contextmanager
def _checkpointing(model: PixelLM, enabled: bool) -> Iterator[None]:
    """The model in train mode (dropout on, as in training), its LLM with or without gradient
    checkpointing (non-reentrant, as make_engine sets it up); the LLM's setting is put back."""
    lm = model.language_model
    was = lm.is_gradient_checkpointing
    _set_checkpointing(lm, enabled)
    model.train()
    try:
        yield
    finally:
        _set_checkpointing(lm, was)


def _set_checkpointing(lm, enabled: bool) -> None:
    if enabled:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_disable()


def estimate_activations(
    model: PixelLM, a: ActivationInputs, region_words: bool = False
) -> ActivationEstimate:
    """Activation bytes per GPU for one micro-batch (ACTIVATION_FORMULA): the saved tensors of the
    training forward of `model` and its largest one; with checkpointing, also one decoder layer's
    saved tensors (the mean over the layers of a run without checkpointing) and its largest."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' checkpointing rename notices
        counter = _SavedTensors(model)
        with _checkpointing(model, a.gradient_checkpointing), counter.counting():
            parts = training_forward(model, a, counter, region_words)
        estimate = ActivationEstimate(
            {k: v[0] for k, v in parts.items()}, max(counter.sizes.values(), default=0)
        )
        if a.gradient_checkpointing:
            plain = _SavedTensors(model)
            with _checkpointing(model, False), plain.counting():
                llm, largest = training_forward(model, a, plain)[LLM]
            estimate.layer = llm // model.llava.config.text_config.num_hidden_layers
            estimate.layer_largest = largest
    return estimate


# ----------------------------------------------------------------------------- the plan


@dataclass
class MemoryPlan:
    """The planner's answer for one config: its inputs, parameter counts, activations, stages."""

    config: str
    gpus: int
    gpu_mem_gb: float
    inputs: dict[str, Any]
    counts: ModelCounts
    activations: ActivationEstimate
    stages: dict[str, StagePlan]

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "preset": self.counts.preset,
            "gpus": self.gpus,
            "gpu_mem_gb": self.gpu_mem_gb,
            "inputs": self.inputs,
            "parameters": {"total": self.counts.total, "trainable": self.counts.trainable},
            "activations": self.activations.to_dict(),
            "stages": {name: stage.to_dict() for name, stage in self.stages.items()},
            "formulas": FORMULAS,
        }


FORMULAS = {
    "units": "GB = 1e9 bytes per GPU; b = bytes per element of the training dtype (bf16 2, fp32 4)",
    "zero2": "params = (P-T)*b + A*b; grads = G*b + max(k*R*b, p*b + [b!=4]*4p); "
    "optimizer = 12p + 4 (A = ceil(T/2N)*2N, p = A/N, G = trainable elements overlapping one "
    "rank's partition, R = reduce_bucket_size, k = 2 with overlap_comm)",
    "zero3": "params = S*b + c*Q*b + L*b; grads = R*b + S_T*b + g*b + [b!=4]*4g; "
    "optimizer = 12*S_T + 4*n_g (c = [N > 1 or offload_param]; S = sum of ceil(numel/N) over "
    "all parameters, S_T over the trainable ones, Q = elements of the persistent parameters "
    "(<= stage3_param_persistence_threshold, whole between steps), L = min(non-persistent elements, "
    "max(max_live_parameters, max_reuse_distance) + M), M = largest module's own non-persistent "
    "elements, g / n_g = largest sub-group / number of sub-groups)",
    "zero3_offload": "GPU: params = Q*b + L*b; grads = R*b; optimizer = 0. CPU: S*b parameter "
    "shards, S_T*b gradient partitions + 4*S_T fp32 gradients, 12*S_T + 4*n_g optimizer",
    "total": "params + grads + optimizer + activations; fits = total <= --gpu-mem",
}


def plan_memory(
    cfg: Config,
    *,
    gpus: int,
    gpu_mem_gb: float = 80.0,
    config_name: str = "",
    stages: dict[str, str | Path] | None = None,
    assumptions: dict[str, Any] | None = None,
) -> MemoryPlan:
    """Plan every stage of `stages` (name -> STAGES name or JSON path; default the three) for
    `cfg` on `gpus` GPUs of `gpu_mem_gb` GB each."""
    import torch

    precision = "bf16" if cfg.train.precision == "auto" else cfg.train.precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = build_meta_model(cfg.model, dtype)
    counts = count_model(model, cfg.model.preset)
    a = ActivationInputs(
        cfg.train.batch_size,
        cfg.data.max_length,
        cfg.train.gradient_checkpointing,
        **(assumptions or {}),
    )
    activations = estimate_activations(model, a, region_words=cfg.train.loss.region_words > 0)
    plans = {}
    for name, template in (stages or {s: s for s in STAGES}).items():
        plan = plan_stage(
            counts, ZeroSettings.from_config(filled_stage_config(template, cfg, gpus)), gpus
        )
        plans[name] = dataclasses.replace(
            plan, name=name, activations=activations.total, gpu_mem_gb=gpu_mem_gb
        )
    inputs = {
        "batch_size": a.batch_size,
        "max_length": a.seq_len,
        "precision": precision,
        "gradient_checkpointing": a.gradient_checkpointing,
        "image_tokens": model.config.num_image_tokens,
        "image_size": model.config.image_size,
        "images_per_micro_batch": a.batch_size,
        "targets_per_row": a.targets_per_row,
        "mask_size_hw": list(a.mask_hw),
        "scored_positions": a.batch_size * (a.seq_len - model.config.num_image_tokens),
    }
    return MemoryPlan(config_name, gpus, gpu_mem_gb, inputs, counts, activations, plans)


# ----------------------------------------------------------------------------- printing


def format_plan(plan: MemoryPlan) -> str:
    """The readable table: one row per stage, the inputs above it and the formulas below."""
    i = plan.inputs
    checkpointing = "on" if i["gradient_checkpointing"] else "off"
    fits = f"fits {plan.gpu_mem_gb:g} GB"
    lines = [
        f"PixelLM {plan.counts.preset} ({plan.config}): {plan.counts.total:,} parameters, "
        f"{plan.counts.trainable:,} trainable",
        f"per GPU, {plan.gpus} GPUs: micro-batch {i['batch_size']}, max_length {i['max_length']}, "
        f"{i['precision']}, gradient checkpointing {checkpointing}, "
        f"{i['targets_per_row']} masks/row at {i['mask_size_hw'][0]}x{i['mask_size_hw'][1]}",
        "",
        f"{'stage':<15}{'params':>8}{'grads':>8}{'optim':>8}{'activ':>8}{'total':>8}   {fits}"
        f"{'CPU':>8}",
    ]
    for name, s in plan.stages.items():
        row = [s.term("params"), s.term("grads"), s.term("optimizer"), s.activations, s.total]
        numbers = "".join(f"{v / GB:8.2f}" for v in row)
        answer = "yes" if s.fits else "NO"
        lines.append(f"{name:<15}{numbers}   {answer:<{len(fits)}}{s.cpu_total / GB:8.2f}")
    lines += [
        "(GB = 1e9 bytes per GPU; CPU: host memory per GPU process for offloaded states)",
        "",
        _activation_line(plan.activations),
        "",
        "formulas:",
    ]
    lines += [f"  {k}: {v}" for k, v in FORMULAS.items()]
    lines += ["  activations: " + ACTIVATION_FORMULA]
    for name, s in plan.stages.items():
        lines.append(f"  {name} symbols: " + ", ".join(f"{k}={v:,}" for k, v in s.symbols.items()))
    return "\n".join(lines)


def _activation_line(a: ActivationEstimate) -> str:
    saved = ", ".join(f"{k} {v / GB:.2f}" for k, v in a.saved.items())
    line = f"activations {a.total / GB:.2f} GB = max(forward end {a.forward_end / GB:.2f}"
    line += f", recompute peak {a.recompute / GB:.2f})" if a.layer else ")"
    return (
        line
        + f"; saved for backward: {saved}; largest saved tensor {a.largest / GB:.2f}"
        + (f"; one layer {a.layer / GB:.2f}" if a.layer else "")
    )


# ----------------------------------------------------------------------------- command


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan-memory",
        help="per-GPU memory of training a config under each ZeRO stage",
        description="Parameters, gradients, optimizer states and activations per GPU for ZeRO-2, "
        "ZeRO-3 and ZeRO-3 offload, from the config's model built on the meta device.",
    )
    p.add_argument("config", help="training YAML (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=4")
    p.add_argument("--gpus", type=int, required=True, help="data-parallel GPUs (ranks)")
    p.add_argument(
        "--gpu-mem", type=float, default=80.0, help="memory of one GPU in GB (1e9 bytes)"
    )
    p.add_argument(
        "--targets", type=int, default=3, help="masks per row assumed for the activations"
    )
    p.add_argument(
        "--mask-size", default="480x640", help="HxW of the original images the masks are scored at"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)


@contextmanager
def _messages_to_stderr() -> Iterator[None]:
    """While the plan is made, library messages go to stderr (DeepSpeed's logger writes to
    stdout), so stdout holds the table or the one JSON object alone."""
    import logging

    with contextlib.redirect_stdout(sys.stderr):
        from deepspeed.utils import logger  # a first import logs too

        moved = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
        streams = [h.setStream(sys.stderr) for h in moved]
        try:
            yield
        finally:
            for handler, stream in zip(moved, streams):
                handler.setStream(stream)


def _run(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        if args.gpus < 1:
            raise ConfigError(f"--gpus must be >= 1, got {args.gpus}")
        h, w = (int(x) for x in args.mask_size.lower().split("x"))
        cfg = load_config(args.config, args.overrides)
        with _messages_to_stderr():
            plan = plan_memory(
                cfg,
                gpus=args.gpus,
                gpu_mem_gb=args.gpu_mem,
                config_name=str(args.config),
                assumptions={"targets_per_row": args.targets, "mask_hw": (h, w)},
            )
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"pixellm plan-memory: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict()) if args.json else format_plan(plan))
    return 0
