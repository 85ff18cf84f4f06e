"""Multi-GPU training on the CPU/gloo stand-in: 2 ranks, every ZeRO stage, LoRA + codebook rows
+ decoder trainable, micro-batch 1, the ranks' micro-batches differing in kind step by step.

The data is a real-format mixture of a VQA source (text only) and a MUSE source (1-3 masks per
question). Its seed is chosen so that the per-step kinds follow STEPS. Each 2-rank run is compared
with one process doing grad_accum=2 over the same samples: StepSampler gives rank r of step s the
global sample 2s + r, and one process's micro-step m the sample m.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model_config
from fixture_data import write_muse, write_vqa

from pixellm.data.mixture import MixtureDataset

REPO = Path(__file__).resolve().parents[1]
STAGES = ["zero2", "zero3", "zero3_offload"]
# (rank 0, rank 1) micro-batch per step: text-only vs with masks, the reverse, both text-only, both masks
STEPS = [("text", "masks"), ("text", "masks"), ("masks", "text"), ("masks", "text"), ("text", "text"),
         ("text", "text"), ("masks", "masks")]
SOURCES = ["text", "masks"]  # data.train order: vqa, muse
TIMEOUT = 300  # a hang fails the test instead of blocking it
LR = 1e-3
FAST = ("train.lr=3e-2", "train.eval_every=7", "train.save_every=2")
"""The ZeRO-3 validation and resume run: lr high enough that 7 steps teach the model to emit
codebook groups, so validation decodes masks."""


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def mixture_seed_for(steps: list[tuple[str, str]], sizes: list[int]) -> int:
    """The first data.seed whose mixture draws the wanted kind for every global sample 2s + r."""
    wanted = [SOURCES.index(kind) for pair in steps for kind in pair]
    for seed in range(200_000):
        mix = MixtureDataset([_Sized(n) for n in sizes], [1.0, 1.0], seed=seed)
        if all(mix.locate(i)[0] == w for i, w in enumerate(wanted)):
            return seed
    raise AssertionError("no mixture seed found")


def clean_env() -> dict:
    """This environment without the process-group variables an in-process run may have set
    (a child would otherwise join that group's port as a one-process group)."""
    drop = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workspace:
    """A llava-hf style tiny checkpoint, the VQA + MUSE files, the config, and memoised runs."""

    def __init__(self, root: Path) -> None:
        from pixellm.build import random_tiny_llava
        from pixellm.tokenization import build_tiny_tokenizer

        self.root = root
        tok = build_tiny_tokenizer()
        torch.manual_seed(11)
        llava = random_tiny_llava(tiny_model_config(), tok)
        llava.save_pretrained(root / "llava")
        tok.save_pretrained(root / "llava")
        muse, muse_images = write_muse(root / "data")
        vqa, vqa_images = write_vqa(root / "data")
        cfg = {
            "model": {"preset": "tiny", "llava_path": str(root / "llava"), "image_size": 64,
                      "decoder_layers": [-2, 1], "decoder": {"dim": 64, "depth": 2, "heads": 4, "mlp_dim": 128},
                      "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},  # dropout off: runs are comparable
            "data": {"max_length": 200, "num_workers": 0, "seed": mixture_seed_for(STEPS, [4, 4]),
                     "train": [{"type": "vqa", "annotations": str(vqa), "image_root": str(vqa_images)},
                               {"type": "muse", "annotations": str(muse), "image_root": str(muse_images)}],
                     "val": [{"type": "muse", "annotations": str(muse), "image_root": str(muse_images),
                              "split": "val"}]},
            "train": {"batch_size": 1, "grad_accum": 1, "max_steps": len(STEPS), "warmup_steps": 1, "lr": LR,
                      "precision": "fp32", "log_every": 1, "wandb_mode": "disabled"},
            "eval": {"limit_images": 3, "max_new_tokens": 12, "batch_size": 2},
        }
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.runs: dict[tuple, Path] = {}

    def run(self, stage: str, ranks: int, *extra: str, name: str | None = None) -> Path:
        """train.py with 2 ranks (torchrun) or one plain process with grad_accum=2; memoised."""
        key = (stage, ranks, extra)
        if key in self.runs:
            return self.runs[key]
        out = self.root / (name or f"{stage}_{ranks}")
        args = [str(self.config), f"train.output_dir={out}", f"train.deepspeed={REPO / 'ds_configs' / (stage + '.json')}",
                *(["train.grad_accum=2"] if ranks == 1 else []), *extra]
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                     "--master_port", str(free_port())] if ranks > 1 else [sys.executable])
        proc = subprocess.run([*launcher, str(REPO / "train.py"), *args], cwd=self.root,
                              env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, f"{stage} x{ranks} failed:\n{proc.stderr[-4000:]}"
        self.runs[key] = out
        return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("multi_gpu"))


def summaries(out: Path, ranks: int) -> list[dict]:
    return [json.loads((out / f"summary_rank{r}.json").read_text()) for r in range(ranks)]


def trained_weights(out: Path) -> dict[str, torch.Tensor]:
    """The trainable weights of the run's last checkpoint, consolidated from any ZeRO stage."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from pixellm.export import resolve_checkpoint

    step_dir, _ = resolve_checkpoint(out)
    state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir.parent), tag=step_dir.name)
    return {k: v for k, v in state.items() if "lora_" in k or "trainable_tokens_delta" in k
            or k.startswith(("codebook.", "decoder."))}


def test_the_mixture_seed_gives_each_rank_the_planned_kind_of_micro_batch(ws):
    """The premise of the comparisons below, checked on the real loaders."""
    from pixellm.config import load_config
    from pixellm.data.sources import load_source

    cfg = load_config(ws.config)
    sizes = [len(load_source(s, cfg.data)) for s in cfg.data.train]
    mix = MixtureDataset([_Sized(n) for n in sizes], [1.0, 1.0], seed=cfg.data.seed)
    kinds = [SOURCES[mix.locate(2 * s + r)[0]] for s in range(len(STEPS)) for r in range(2)]
    assert kinds == [k for pair in STEPS for k in pair]


@pytest.mark.parametrize("stage", STAGES)
def test_two_ranks_with_different_micro_batches_train_like_one_process(ws, stage):
    """Every step finishes on both ranks, whichever holds text only, and the run equals one
    process accumulating the same two samples per step: same losses, same gradient norm (the
    rank average, before clipping), same trained weights.

    Tolerances: both runs do the same fp32 arithmetic except the order of the gradient
    reduction (all-reduce or reduce-scatter over ranks vs accumulation in one process), which
    changes gradients by a few ulps; under ZeRO-2 the weights came out bit-identical. Adam
    divides each gradient by its running RMS, so a weight whose exact gradient is zero (the
    attention key biases: softmax ignores a shift shared by all keys) is moved by rounding noise
    scaled up to a sizeable part of lr: at lr 1e-3, measured up to 1.2e-5 after 7 steps under
    ZeRO-3, with a mean difference of 1.3e-8 over all 376k trained elements. So: at most a tenth
    of one step of lr anywhere and lr/1000 on average. (At lr 3e-2 the noise grows faster than lr:
    2.7e-3, so the comparison runs at 1e-3.) A lost or mis-scaled rank gradient moves the weights
    by ~lr and the gradient norm by far more than the 1e-4 allowed.
    """
    two = ws.run(stage, 2)
    one = ws.run(stage, 1)
    (r0, r1), (single,) = summaries(two, 2), summaries(one, 1)
    assert r0["checksum"] == r1["checksum"]  # both ranks hold the same weights
    assert [(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"])] == pytest.approx(single["losses"], rel=1e-5)
    assert r0["grad_norms"] == pytest.approx(single["grad_norms"], rel=1e-4)
    a, b = trained_weights(two), trained_weights(one)
    assert a.keys() == b.keys() and len(a) > 30
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diff.max() < LR / 10 and diff.mean() < LR / 1000, f"trained weights differ by up to {diff.max()}, {diff.mean()} on average"


def test_zero3_validation_with_an_odd_number_of_images_matches_one_process(ws, tmp_path):
    """train.eval_every under ZeRO-3 on 2 ranks with 3 validation images (2 on rank 0, 1 on
    rank 1, so rank 1 runs a filler job) finishes within the timeout, and writes the same
    predictions and metrics as one process evaluating the same (consolidated) weights."""
    from pixellm.config import load_config
    from pixellm.export import load_from_checkpoint
    from pixellm.training.distributed import DistInfo
    from pixellm.training.validation import validate

    two = ws.run("zero3", 2, *FAST, name="zero3_fast")
    folder = next((two / "val_step7").iterdir())
    model = load_from_checkpoint(two).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks ran with OMP_NUM_THREADS=1: the same reduction order
    try:
        metrics = validate(model, load_config(ws.config), DistInfo(0, 0, 1, torch.device("cpu")), tmp_path)
    finally:
        torch.set_num_threads(threads)
    one = tmp_path / folder.name
    assert (folder / "predictions.jsonl").read_text() == (one / "predictions.jsonl").read_text()
    assert json.loads((folder / "metrics.json").read_text()) == json.loads((one / "metrics.json").read_text())
    assert json.loads((folder / "metrics.json").read_text())["num_questions"] == 3
    preds = [json.loads(line) for line in (one / "predictions.jsonl").read_text().splitlines()]
    assert any(p["masks"] for p in preds), "the trained model emits no codebook group: the mask path went untested"
    logged = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("val/") for row in logged for k in row) and metrics


def test_zero3_kill_and_resume_continues_the_same_loss_sequence(ws):
    """Killed after step 3 (checkpoint at step 2), resumed with train.resume=auto: steps 3-7
    repeat the uninterrupted run's losses, on both ranks."""
    full = ws.run("zero3", 2, *FAST, name="zero3_fast")
    args = ("train.lr=3e-2", "train.save_every=2", "train.eval_every=0")
    killed = ws.run("zero3", 2, *args, "--stop-after", "3", name="zero3_killed")
    assert (killed / "checkpoints" / "latest").read_text() == "step_2"
    first = summaries(killed, 2)
    resumed = ws.run("zero3", 2, *args, "train.resume=auto", name="zero3_killed")
    for rank, (before, after, ref) in enumerate(zip(first, summaries(resumed, 2), summaries(full, 2))):
        assert before["losses"] == pytest.approx(ref["losses"][:3], rel=1e-5), f"rank {rank}"
        assert after["losses"] == pytest.approx(ref["losses"][2:], rel=1e-5), f"rank {rank}"


def test_zero3_loading_partitions_the_model_over_the_ranks_in_bf16(ws):
    """Under ZeRO-3 each of 2 ranks holds about half of the parameter elements after loading
    (the LLM and the decoder partitioned as they are built; only the small LoRA and codebook-row
    adapters are whole until deepspeed.initialize), and train.precision=bf16 reads the LLM in
    bf16 before DeepSpeed starts."""
    out = ws.root / "probe"
    out.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "pixellm.rehearsal.probe", str(ws.config), str(out), "train.precision=bf16",
           f"train.deepspeed={REPO / 'ds_configs' / 'zero3.json'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((out / f"probe_rank{rank}.json").read_text())
        assert 0.45 < report["held"] / report["total"] < 0.6, report
        assert report["llm_dtypes"] == ["torch.bfloat16"]
        assert report["llm_partitioned"] and report["decoder_partitioned"]


@pytest.mark.parametrize("stage", ["zero3", "zero3_offload"])
def test_pixellm_export_of_a_zero3_run_reloads_with_the_trained_outputs(ws, stage, tmp_path):
    """`pixellm export` consolidates the 2-rank ZeRO-3 shards, merges LoRA, and the folder
    reloads with no flags, giving the outputs of the consolidated (unmerged) checkpoint."""
    from conftest import make_batch

    from pixellm.cli import main as cli
    from pixellm.export import load_from_checkpoint
    from pixellm.modeling.pixellm import PixelLM

    run = ws.run(stage, 2)
    assert cli(["export", str(run), str(tmp_path / "exported")]) == 0
    exported = PixelLM.from_pretrained(tmp_path / "exported").eval()
    unmerged = load_from_checkpoint(run).eval()
    batch = make_batch(unmerged, ["the cup <seg> and the plate <seg>."])
    with torch.no_grad():
        a, b = unmerged(batch), exported(batch)
    assert torch.allclose(a.hidden_states, b.hidden_states, atol=1e-4)
    assert torch.allclose(a.mask_logits[0], b.mask_logits[0], atol=1e-3)


@pytest.mark.parametrize("stage", STAGES)
def test_what_each_rank_engine_holds_equals_the_memory_plan_for_two_gpus(ws, stage):
    """`pixellm plan-memory ... --gpus 2` against the engines of the two-rank run above: every part
    that lives through the step (train.py writes them, training/held.py counts them from the
    engine's objects) is equal on both ranks, byte for byte. tests/test_plan_memory.py checks the
    transient parts on one process."""
    from pixellm import memory_plan as mp
    from pixellm.config import load_config

    template = REPO / "ds_configs" / f"{stage}.json"
    cfg = load_config(ws.config, [f"train.deepspeed={template}"])
    plan = mp.plan_memory(cfg, gpus=2, stages={stage: template}).stages[stage]
    planned = {p.what: p.bytes for p in plan.parts}
    expected = {"zero2": 5, "zero3": 7, "zero3_offload": 8}[stage]
    for s in summaries(ws.run(stage, 2), 2):
        held = s["engine_bytes"]
        assert len(held) == expected and {k: planned[k] for k in held} == held
        assert all(v > 0 for v in held.values()), held


@pytest.mark.parametrize("stage", STAGES)
def test_checkpoints_leave_out_the_frozen_base_and_resume_and_export_rebuild_it(ws, stage):
    """The base is on disk (model.llava_path), so a checkpoint holds the trainable part only:
    the saved module state names no frozen parameter (the resume and export tests above then
    prove the model is rebuilt from the base correctly)."""
    from pixellm.export import resolve_checkpoint
    from pixellm.training.checkpoint import frozen_excluded

    step_dir, _ = resolve_checkpoint(ws.run(stage, 2))
    assert frozen_excluded(step_dir)
    files = list(step_dir.glob("*model_states.pt"))
    assert files
    for path in files:
        module = torch.load(path, map_location="cpu", weights_only=False).get("module") or {}
        saved = {k for k in module if "lora_" not in k and "trainable_tokens" not in k}
        frozen_base = {k for k in saved if k.startswith("llava.") and not k.endswith("_buffer")}
        assert not frozen_base, f"{path.name} holds frozen weights, e.g. {sorted(frozen_base)[:3]}"
