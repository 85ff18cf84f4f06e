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
  each term's formula). tests/test_plan_memory*.py check them against real one-process engines.
* Activations are the tensors autograd saves for backward, counted while the training forward of
  the meta model runs at the config's micro-batch, length and dtype (`estimate_activations`).

Building the argument parser imports nothing heavy: torch, transformers and DeepSpeed load when
the command runs.

Layout: `counts` (the meta model and its counts), `zero` (what each ZeRO engine allocates),
`activations` (the saved-tensor count), and here the plan, its table and the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# the names other modules and the tests use stay importable from `pixellm.memory_plan`
from .activations import (  # noqa: F401
    ACTIVATION_FORMULA,
    LLM,
    MASKS,
    ActivationEstimate,
    ActivationInputs,
    _checkpointing,
    _SavedTensors,
    estimate_activations,
    training_forward,
)
from .counts import GB, STAGES, ModelCounts, ParamInfo, _gb, build_meta_model, count_model  # noqa: F401
from .zero import (  # noqa: F401
    StagePlan,
    ZeroSettings,
    filled_stage_config,
    plan_stage,
    plan_zero2,
    plan_zero3,
    zero2_partition,
    zero3_sizes,
)

if TYPE_CHECKING:  # torch & co. load when a function runs, not with the parser
    from ..config import Config


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
    from ..config import ConfigError, load_config

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
