"""`pixellm plan-memory` (pixellm/memory_plan.py) against what really happens at tiny size.

* Parameter, gradient and optimizer bytes: the planner with one GPU against a real one-process
  DeepSpeed engine built as train.py builds it (build_model, make_engine), ZeRO-2, ZeRO-3 and
  ZeRO-3 offload, fp32 and bf16, after two training steps: every allocation the planner names is
  counted from the engine's own objects and must be equal, byte for byte.
Activations: test_plan_memory_activations.py; the command: test_plan_memory_cli.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from pixellm import memory_plan as mp
from pixellm.config import load_config

REPO = Path(__file__).resolve().parents[1]
# the shipped templates with small buckets and, for ZeRO-3, thresholds a tiny model crosses: small
# parameters persistent, the rest partitioned and gathered, trainable shards in five sub-groups
SMALL = {
    "zero2": {"reduce_bucket_size": 30000, "allgather_bucket_size": 30000},
    "zero3": {
        "reduce_bucket_size": 20000,
        "stage3_prefetch_bucket_size": 5000,
        "stage3_param_persistence_threshold": 2000,
        "stage3_max_live_parameters": 30000,
        "stage3_max_reuse_distance": 30000,
        "sub_group_size": 100000,
    },
}
SMALL["zero3_offload"] = {
    **SMALL["zero3"],
    "offload_optimizer": {"device": "cpu", "pin_memory": False},
    "offload_param": {"device": "cpu", "pin_memory": False},
}
RUNS = [
    ("zero2", "fp32"),
    ("zero2", "bf16"),
    ("zero3", "fp32"),
    ("zero3", "bf16"),
    ("zero3_offload", "fp32"),
    ("zero3_offload", "bf16"),
]


def small_template(stage: str, folder: Path) -> Path:
    cfg = json.loads((REPO / "ds_configs" / f"{stage}.json").read_text())
    cfg["zero_optimization"].update(SMALL[stage])
    path = folder / f"{stage}.json"
    path.write_text(json.dumps(cfg))
    return path


def tiny_config(template: Path, precision: str):
    """The demo config (tests/test_training.py tiny_args) trained the 7B way: LoRA, codebook rows,
    fusion and decoder train; CLIP and the LLM base stay frozen."""
    return load_config(
        REPO / "configs/tiny_synthetic.yaml",
        [
            f"train.deepspeed={template}",
            f"train.precision={precision}",
            "train.batch_size=2",
            "model.train_llm=false",
            "model.train_vision=false",
            "train.wandb_mode=disabled",
        ],
    )


# ----------------------------------------------------------------------------- engines


def nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def storage_bytes(tensors) -> dict[int, int]:
    return {t.untyped_storage()._cdata: nbytes(t) for t in tensors}


class Recorder:
    """Wraps the engine's optimizer to see the buffers that exist only for a moment: ZeRO-2's
    reduce buckets and gradient partition (just before backward releases them), the flattened
    gradients and fp32 gradients of the step, and ZeRO-3's gathered parameters (sampled at every
    module's forward and backward)."""

    def __init__(self, engine, stage3: bool) -> None:
        self.opt, self.stage3 = engine.optimizer, stage3
        self.flat: list[torch.Tensor] = []
        self.fp32: list[torch.Tensor] = []
        self.buckets = self.grad_partition = self.live = 0
        self.stepping = False
        flatten, step = self.opt.flatten, self.opt._optimizer_step

        def recording_flatten(tensors):
            out = flatten(tensors)
            if self.stepping:
                self.flat.append(out)
            return out

        def recording_step(i):
            groups = (
                self.opt.fp32_partitioned_groups_flat
                if stage3
                else self.opt.single_partition_of_fp32_groups
            )
            self.fp32.append(groups[i].grad)
            return step(i)

        self.opt.flatten, self.opt._optimizer_step = recording_flatten, recording_step
        if stage3:
            self._sample_gathered(engine.module)
        else:
            self._wrap_release()

    def _wrap_release(self) -> None:
        release = self.opt._release_ipg_buffers

        def recording_release():
            buffers = [b for bucket in self.opt.ipg_buckets.values() for b in bucket.buffer]
            self.buckets = max(self.buckets, sum(nbytes(b) for b in buffers))
            if self.opt.grads_in_partition is not None:
                self.grad_partition = max(self.grad_partition, nbytes(self.opt.grads_in_partition))
            return release()

        self.opt._release_ipg_buffers = recording_release

    def _sample_gathered(self, module: torch.nn.Module) -> None:
        params = list(module.parameters())

        def sample(*_):
            shards = storage_bytes(p.ds_tensor for p in params)
            gathered = storage_bytes(
                p.data
                for p in params
                if p.ds_status.name == "AVAILABLE" and not p.ds_persist and p.numel()
            )
            self.live = max(self.live, sum(v for k, v in gathered.items() if k not in shards))

        for m in module.modules():
            m.register_forward_pre_hook(sample)
            m.register_full_backward_pre_hook(sample)

    def step_bytes(self) -> tuple[int, int]:
        """(largest flattened gradients, largest fp32 gradients that are not a flattened tensor)."""
        flat = {t.untyped_storage()._cdata for t in self.flat}
        return (
            max((nbytes(t) for t in self.flat), default=0),
            max(
                (nbytes(g) for g in self.fp32 if g.untyped_storage()._cdata not in flat), default=0
            ),
        )


def train_two_steps(engine, cfg, recorder: Recorder) -> None:
    from conftest import make_batch

    from pixellm.constants import SEG_PLACEHOLDER

    batch = make_batch(
        engine.module,
        [f"the red circle {SEG_PLACEHOLDER}.", f"two {SEG_PLACEHOLDER} and {SEG_PLACEHOLDER}."],
    )
    for _ in range(2):
        engine.backward(engine(batch, loss_weights=cfg.train.loss).loss.total)
        recorder.stepping = True
        engine.step()
        recorder.stepping = False


def optimizer_state_bytes(opt) -> dict[str, int]:
    state = opt.optimizer.state.values()
    return {
        "AdamW moments": sum(nbytes(s[k]) for s in state for k in ("exp_avg", "exp_avg_sq")),
        "AdamW step": sum(nbytes(s["step"]) for s in state),
    }


def zero2_bytes(engine, rec: Recorder) -> dict[str, int]:
    opt, params = engine.optimizer, list(engine.module.parameters())
    flat, fp32 = rec.step_bytes()
    return {
        "frozen parameters": sum(storage_bytes(p for p in params if not p.requires_grad).values()),
        "trainable parameters (flat, padded)": sum(
            storage_bytes(p for p in params if p.requires_grad).values()
        ),
        "fp32 master partition": sum(nbytes(g) for g in opt.single_partition_of_fp32_groups),
        **optimizer_state_bytes(opt),
        "gradient partition": rec.grad_partition,
        "reduce buckets": rec.buckets,
        "flattened gradient partition": flat,
        "fp32 gradient partition": fp32,
    }


def zero3_bytes(engine, rec: Recorder) -> dict[str, int]:
    opt, params = engine.optimizer, list(engine.module.parameters())
    shards = storage_bytes(p.ds_tensor for p in params)
    whole = storage_bytes(
        p.data for p in params if p.numel()
    )  # after the step: the persistent ones
    flat, fp32 = rec.step_bytes()
    out = {
        "parameter shards": sum(shards.values()),
        "persistent parameters (whole)": sum(v for k, v in whole.items() if k not in shards),
        "gathered parameters (live window)": rec.live,
        "IPG bucket": sum(nbytes(b.buffer) for b in opt.ipg_buckets.values()),
        "gradient partitions": nbytes(opt.grad_partitions_flat_buffer),
        "fp32 master shards": sum(
            v for k, v in storage_bytes(opt.fp32_partitioned_groups_flat).items() if k not in shards
        ),
        **optimizer_state_bytes(opt),
    }
    if opt.offload_optimizer:
        out["fp32 gradient buffer"] = sum(nbytes(g.grad) for g in opt.fp32_partitioned_groups_flat)
    else:
        out["flattened sub-group gradients"], out["fp32 sub-group gradients"] = flat, fp32
    return out


def measure_runs(folder: Path) -> dict[str, dict]:
    """Plan every run of RUNS, then build its engine as train.py does (build_model, make_engine),
    train two steps and count what the engine holds. Runs in a child process (see `engine_runs`):
    a ZeRO-3 build leaves process-wide state behind (transformers' DeepSpeed config, constructors
    of the classes first imported inside zero.Init), so the plans, which build plain meta models,
    come first, and no other test shares the process."""
    import gc

    from pixellm.training.distributed import init_distributed
    from pixellm.training.setup import build_model, deepspeed_config, make_engine

    templates = {stage: small_template(stage, folder) for stage, _ in RUNS}
    configs, out = {}, {}
    for precision in dict.fromkeys(p for _, p in RUNS):  # one meta build per precision
        plans = mp.plan_memory(
            tiny_config(templates["zero2"], precision), gpus=1, stages=templates
        ).stages
        for stage in templates:
            configs[stage, precision] = tiny_config(templates[stage], precision), plans[stage]
    dist = init_distributed()
    for stage, precision in RUNS:  # ZeRO-2 first: after a ZeRO-3 build, peft sees ZeRO-3 everywhere
        cfg, plan = configs[stage, precision]
        ds_cfg = deepspeed_config(cfg, dist)
        torch.manual_seed(0)
        engine = make_engine(build_model(cfg, dist, ds_cfg), cfg, ds_cfg)
        stage3 = ds_cfg["zero_optimization"]["stage"] == 3
        recorder = Recorder(engine, stage3)
        train_two_steps(engine, cfg, recorder)
        out[f"{stage}-{precision}"] = {
            "planned": {p.what: p.bytes for p in plan.parts},
            "symbols": plan.symbols,
            "measured": zero3_bytes(engine, recorder) if stage3 else zero2_bytes(engine, recorder),
            "trainable": sum(
                getattr(p, "ds_numel", p.numel())
                for p in engine.module.parameters()
                if p.requires_grad
            ),
        }
        del engine, recorder
        gc.collect()
    return out


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory) -> dict[str, dict]:
    """measure_runs in one child process: one rank (RANK=0, WORLD_SIZE=1), as a plain
    `python train.py` run gets from training/distributed.py."""
    import os
    import socket
    import subprocess

    folder = tmp_path_factory.mktemp("engines")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, __file__, str(folder), str(folder / "runs.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((folder / "runs.json").read_text())


@pytest.mark.parametrize("stage,precision", RUNS)
def test_planned_bytes_equal_a_real_engine(engine_runs, stage, precision):
    """One process (--gpus 1): every part the planner lists equals what the engine holds."""
    run = engine_runs[f"{stage}-{precision}"]
    planned, measured, symbols = run["planned"], run["measured"], run["symbols"]
    window = "gathered parameters (live window)"  # ZeRO-3: a bound on what forward/backward gather
    assert measured.pop(window, 0) <= planned.pop(window, 0)
    if stage == "zero3_offload" and not torch.cuda.is_available():
        # the planner's persistent parameters are whole copies on the GPU (their shards live in CPU
        # memory); where the accelerator is the CPU itself the "copy" is the shard: a view
        planned["persistent parameters (whole)"] = 0
    assert planned == measured
    assert symbols["T"] == run["trainable"] and symbols["b"] == (2 if precision == "bf16" else 4)
    if (
        stage != "zero2"
    ):  # the thresholds make ZeRO-3's shapes visible: persistent, partitioned, sub-groups
        assert (
            0 < symbols["Q"] < symbols["P"]
            and symbols["n_g"] == 5
            and measured["AdamW step"] == 4 * 5
        )


def test_persistent_parameters_are_views_with_one_rank_and_copies_otherwise():
    """With one rank the persistent ZeRO-3 parameters are views of their shards (nothing to count,
    as the engine test above sees); with more ranks their whole copies count. The live window is
    min(non-persistent elements, max(max_live_parameters, max_reuse_distance) + M)."""
    counts = mp.ModelCounts(
        "x",
        (
            mp.ParamInfo("a", 10_000, False),
            mp.ParamInfo("b", 10_000, False),
            mp.ParamInfo("small", 10, True),
        ),
        (("a",), ("b",), ("small",)),
    )
    z = mp.ZeroSettings(
        stage=3,
        overlap_comm=True,
        contiguous_gradients=True,
        reduce_bucket_size=100,
        param_persistence_threshold=100,
        model_persistence_threshold=sys.maxsize,
        max_live_parameters=3000,
        max_reuse_distance=3000,
        sub_group_size=10**9,
        offload_optimizer=False,
        offload_param=False,
        dtype_bytes=2,
    )
    one, two = mp.plan_zero3(counts, z, 1), mp.plan_zero3(counts, z, 2)
    part = {p.what: p.bytes for p in two.parts}
    assert {p.what: p.bytes for p in one.parts}["persistent parameters (whole)"] == 0
    assert {p.what: p.bytes for p in one.parts}["gathered parameters (live window)"] == (
        3000 + 10_000
    ) * 2
    assert part["persistent parameters (whole)"] == 10 * 2
    assert (
        part["gathered parameters (live window)"] == (3000 + 10_000) * 2
    )  # the limit + M < 20,000
    assert part["parameter shards"] == (5000 + 5000 + 5) * 2


def test_zero2_partition_of_each_rank():
    """G: the trainable parameters overlapping the fullest rank's partition, counted whole."""
    counts = mp.ModelCounts(
        "x", tuple(mp.ParamInfo(str(i), n, True) for i, n in enumerate([10, 3, 7])), ()
    )
    assert mp.zero2_partition(counts, 1) == (20, 20, 20)
    assert mp.zero2_partition(counts, 2) == (20, 10, 10)  # rank 1 starts where parameter 1 does
    assert mp.zero2_partition(counts, 4) == (24, 6, 13)  # rank 1: all of parameters 0 and 1


if __name__ == "__main__":  # the child process of `engine_runs`: FOLDER OUT_JSON
    sys.path.insert(0, str(Path(__file__).parent))  # conftest's make_batch
    Path(sys.argv[2]).write_text(json.dumps(measure_runs(Path(sys.argv[1]))))
