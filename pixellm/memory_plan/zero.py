"""What DeepSpeed's ZeRO engines allocate per GPU (parameters, gradients, optimizer states), from
the filled stage config and the meta model's counts (deepspeed/runtime/zero/stage_1_and_2.py and
stage3.py; each term's formula is in `plan_zero2` and `plan_zero3`)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .counts import ADAM_MOMENTS, FP32, GB, STEP_BYTES, ModelCounts, _gb

if TYPE_CHECKING:  # torch & co. load when a function runs, not with the parser

    from ..config import Config


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

    from ..training.ds_config import PACKAGE_DS_CONFIGS, fill_deepspeed_config

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
