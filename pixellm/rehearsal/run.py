"""`make rehearsal`: the committed 7B recipe at real widths on this CPU, stage by stage.

    python -m pixellm.rehearsal [--out outputs/rehearsal] [--llm-layers 2] [--steps 2]

A random checkpoint with llava-1.5-7b-hf's exact configuration but `--llm-layers` LLM layers
(checkpoint.py) and real-size data in every layout the recipe reads (data.py) are written to
--out; then `configs/pixellm_7b.yaml` is run there with only paths, depth, step counts and
batch sizes overridden: 2 ranks under ZeRO-2, ZeRO-3 and ZeRO-3-offload with the whole mixture
and gradient checkpointing (fp32 compute: bf16 matmuls are emulated and 5-25x slower on this
CPU), a ZeRO-3 bf16 load check, a run killed with SIGKILL and resumed, an export, evaluate.py
on refcoco:val (both protocols), grefcoco:val, muse:val and reasonseg:val, and `pixellm chat`.
`<out>/report.json` is rewritten after every stage: each stage's `ok`, seconds, and its figures
(seconds per step, peak RSS per rank, losses, truncated answers per source, metrics); a stage
that cannot run because an earlier one failed says so. Exit status 1 if any stage failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "pixellm_7b.yaml"
STAGES = ("zero2", "zero3", "zero3_offload")
SAVE_EVERY = 2
"""Checkpoint at step 2 (and at the end): the resume stage kills a run once step 2 is saved."""


class StageFailed(RuntimeError):
    """A stage's command failed; the message holds the end of its output."""


class Rehearsal:
    """Runs stages in order and keeps the report (written after each stage)."""

    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out, self.args = out, args
        self.report: dict = {"stages": {}, "config": str(RECIPE), "llm_layers": args.llm_layers, "steps": args.steps,
                             "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
        self.start = time.time()
        self.data_seed = 0  # set by the data pass (schedule.pick_seed)

    def stage(self, name: str, fn: Callable[[], dict], needs: tuple[str, ...] = ()) -> bool:
        """Run `fn` as stage `name` (its dict goes into the report) unless a stage it needs failed."""
        failed = [n for n in needs if not self.report["stages"].get(n, {}).get("ok")]
        if failed:
            self.report["stages"][name] = {"ok": False, "error": f"not run: needs {', '.join(failed)}"}
        else:
            t = time.time()
            print(f"[rehearsal] {name} ...", flush=True)
            try:
                result = {"ok": True, **fn()}
            except Exception as e:  # the report names the stage and the cause; the rest goes on
                result = {"ok": False, "error": f"{type(e).__name__}: {e}"[-4000:]}
            result["seconds"] = round(time.time() - t, 1)
            self.report["stages"][name] = result
            print(f"[rehearsal] {name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s", flush=True)
        self.report["total_s"] = round(time.time() - self.start, 1)
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2, sort_keys=True))
        return self.report["stages"][name]["ok"]


def run(cmd: list[str], cwd: Path, timeout: float, env: dict | None = None) -> str:
    """Run a command; StageFailed with the end of its output when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or child_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise StageFailed(f"`{' '.join(map(str, cmd[:6]))} ...` exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def child_env() -> dict:
    drop = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(ranks: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
            str(free_port())]


def recipe_overrides(r: Rehearsal, stage: str, run_dir: Path, steps: int, *extra: str) -> list[str]:
    """The only changes to the committed recipe: paths, depth (in the checkpoint), step counts,
    batch sizes, and the mixture seed that puts the hard cases into the few steps (schedule.py)."""
    return [str(RECIPE), f"model.llava_path={r.out / 'checkpoint'}", f"train.output_dir={run_dir}",
            f"train.deepspeed={stage}.json", f"train.max_steps={steps}", "train.warmup_steps=1",
            "train.batch_size=1", "train.grad_accum=1", f"train.save_every={SAVE_EVERY}", "train.eval_every=0",
            "train.log_every=1", "train.keep_last=1", f"data.seed={r.data_seed}", *extra]


def training_figures(run_dir: Path) -> dict:
    """Losses, seconds per step, peak RSS per rank and truncated answers per source of a run."""
    ranks = sorted(run_dir.glob("summary_rank*.json"))
    summaries = [json.loads(p.read_text()) for p in ranks]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [row["time"] for row in logged]
    steps = [b - a for a, b in zip([0.0] + times, times)]
    truncated: dict[str, int] = {}
    for s in summaries:
        for key, value in s["counts"].items():
            if key.startswith(("truncated_", "n_")):
                truncated[key] = truncated.get(key, 0) + value
    return {
        "losses_per_rank": [s["losses"] for s in summaries], "grad_norms": summaries[0]["grad_norms"],
        "seconds_per_step": steps, "first_step_s": steps[0] if steps else None,
        "peak_rss_gb_per_rank": [round(s["peak_rss_gb"], 2) for s in summaries], "sample_counts": truncated,
    }


def data_pass_stage(r: Rehearsal) -> dict:
    """Every record of every source of the recipe's mixture through the training input path
    (loader, processor with the real tokenizer and template at data.max_length): per source the
    records, answers cut to fit (truncated), targets dropped, records skipped and the token
    lengths. The training stages see a few samples; this sees them all, at no model cost."""
    import contextlib

    from ..build import text_processor
    from ..config import load_config
    from ..data.lengths import token_lengths
    from ..data.mixture import QADataset
    from ..data.skips import SkipLog
    from ..training.setup import load_training_records
    from .schedule import pick_seed

    cfg = load_config(RECIPE, [f"model.llava_path={r.out / 'checkpoint'}"])
    processor = text_processor(cfg)
    per_source = {}
    with contextlib.chdir(r.out):  # the recipe's data paths are relative to the run's directory
        skips = SkipLog(None)
        sources = load_training_records(cfg, skips)
        for name, records in sources:
            samples = [QADataset(records, processor, name)[i] for i in range(len(records))]
            per_source[name] = {
                "records": len(records), "truncated": sum(s.extra["truncated"] for s in samples),
                "dropped_targets": sum(s.extra["dropped_targets"] for s in samples),
                "skipped": sum(len(s.extra["skipped"]) for s in samples),
                "token_lengths": {k: v for k, v in token_lengths(records, processor).items() if k.startswith(("p", "max"))},
            }
    r.data_seed, plan = pick_seed(sources, [s.weight for s in cfg.data.train], r.args.steps)
    return {"max_length": cfg.data.max_length, "sources": per_source, "load_skipped": len(skips.entries),
            "data_seed": r.data_seed, "micro_batches": [d.to_dict() for d in plan]}


def train_stage(r: Rehearsal, stage: str) -> dict:
    run_dir = r.out / "runs" / stage
    cmd = [*torchrun(2), str(REPO / "train.py"),
           *recipe_overrides(r, stage, run_dir, r.args.steps, "train.overwrite=true")]
    run(cmd, cwd=r.out, timeout=r.args.stage_timeout)
    return {**training_figures(run_dir), "memory_plan": plan_against_engines(r, stage, run_dir)}


def plan_against_engines(r: Rehearsal, stage: str, run_dir: Path) -> dict[str, list[int]]:
    """`pixellm plan-memory` for this run (2 GPUs, the stage's template, fp32 as "auto" picks on
    a CPU) against the bytes each rank's engine holds (train.py's `engine_bytes`):
    {part: [planned, rank 0, rank 1]}. A difference fails the stage."""
    from ..config import load_config
    from ..memory_plan import plan_memory
    from ..training.ds_config import PACKAGE_DS_CONFIGS

    template = PACKAGE_DS_CONFIGS / f"{stage}.json"
    overrides = recipe_overrides(r, stage, run_dir, r.args.steps)[1:]
    cfg = load_config(RECIPE, [*overrides, f"train.deepspeed={template}", "train.precision=fp32"])
    planned = {p.what: p.bytes for p in plan_memory(cfg, gpus=2, stages={stage: template}).stages[stage].parts}
    held = [json.loads(p.read_text())["engine_bytes"] for p in sorted(run_dir.glob("summary_rank*.json"))]
    table = {part: [planned.get(part), *(h[part] for h in held)] for part in held[0]}
    wrong = {part: row for part, row in table.items() if len(set(row)) != 1}
    if wrong:
        raise StageFailed(f"{stage}: the memory plan differs from the engines' bytes {{part: [planned, rank0, rank1]}}: {wrong}")
    return table


def bf16_load_stage(r: Rehearsal) -> dict:
    """ZeRO-3, train.precision=bf16: the checkpoint is read in bf16 and partitioned while loading
    (no bf16 step: it would be emulated here)."""
    out = r.out / "runs" / "bf16_load"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*torchrun(2), "-m", "pixellm.rehearsal.probe", str(RECIPE), str(out),
           f"model.llava_path={r.out / 'checkpoint'}", "train.precision=bf16", "train.deepspeed=zero3.json"]
    run(cmd, cwd=r.out, timeout=r.args.stage_timeout)
    probes = [json.loads(p.read_text()) for p in sorted(out.glob("probe_rank*.json"))]
    for p in probes:
        if p["llm_dtypes"] != ["torch.bfloat16"] or not p["llm_partitioned"] or not p["bf16_enabled"]:
            raise StageFailed(f"bf16 ZeRO-3 load: {p}")
    return {"held_fraction_per_rank": [round(p["held"] / p["total"], 3) for p in probes],
            "total_params": probes[0]["total"], "peak_rss_gb_per_rank": [round(p["peak_rss_gb"], 2) for p in probes],
            "filled_cuda_config": cuda_config_check()}


def cuda_config_check() -> dict:
    """The DeepSpeed config an 8-GPU bf16 run of the recipe gets (precision auto is bf16 on GPUs
    that support it): bf16 on, torch's fused AdamW (nothing compiled)."""
    import dataclasses

    import torch

    from ..config import load_config
    from ..training.ds_config import load_deepspeed_config

    cfg = load_config(RECIPE)
    train = dataclasses.replace(cfg.train, precision="bf16")
    filled = load_deepspeed_config(train.deepspeed, train, world_size=8, device=torch.device("cuda"), config_file=RECIPE)
    if not filled["bf16"]["enabled"] or not filled["optimizer"]["params"].get("fused"):
        raise StageFailed(f"the filled CUDA config is not bf16 with torch's fused AdamW: {filled}")
    return {"bf16_enabled": filled["bf16"]["enabled"], "optimizer": filled["optimizer"],
            "train_batch_size": filled["train_batch_size"]}


def resume_stage(r: Rehearsal) -> dict:
    """The ZeRO-2 stage's run again, killed with SIGKILL once its step-2 checkpoint is complete,
    then resumed with train.resume=auto: the resumed steps must repeat the uninterrupted run's
    losses (train_zero2)."""
    run_dir = r.out / "runs" / "resume"
    args = recipe_overrides(r, "zero2", run_dir, r.args.steps)
    proc = subprocess.Popen([*torchrun(2), str(REPO / "train.py"), *args, "train.overwrite=true"], cwd=r.out,
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + r.args.stage_timeout
    while not latest.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run, as a node failure would
    proc.wait()
    killed_at = latest.read_text().strip() if latest.is_file() else None
    if killed_at is None:
        raise StageFailed("no checkpoint was written before the kill")
    run([*torchrun(2), str(REPO / "train.py"), *args, "train.resume=auto"], cwd=r.out, timeout=r.args.stage_timeout)
    resumed = training_figures(run_dir)["losses_per_rank"]
    reference = r.report["stages"]["train_zero2"]["losses_per_rank"]
    done = int(killed_at.split("_")[1])
    for rank, (got, want) in enumerate(zip(resumed, reference)):
        if not all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(got, want[done:], strict=True)):
            raise StageFailed(f"rank {rank}: resumed losses {got} differ from the uninterrupted {want[done:]}")
    return {"killed_after": killed_at, "resumed_losses_per_rank": resumed,
            "finished_at": latest.read_text().strip(), "matches_uninterrupted": True}


def export_stage(r: Rehearsal) -> dict:
    out = r.out / "export"
    run([sys.executable, "-m", "pixellm", "export", str(r.out / "runs" / "zero2"), str(out)], cwd=r.out,
        timeout=r.args.stage_timeout)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"path": str(out), "size_gb": round(size / 1e9, 2)}


def evaluate_stage(r: Rehearsal) -> dict:
    out = r.out / "eval"
    run([sys.executable, str(REPO / "evaluate.py"), str(r.out / "export"), "--dataset", "refcoco:val",
         "--dataset", "grefcoco:val", "--dataset", "muse:val", "--dataset", "reasonseg:val", "--data-root", str(r.out / "data"), "--out", str(out),
         "eval.limit_images=2", f"eval.max_new_tokens={r.args.max_new_tokens}", "eval.batch_size=2"],
        cwd=r.out, timeout=r.args.stage_timeout)
    return {"metrics": json.loads((out / "summary.json").read_text())}


def chat_stage(r: Rehearsal) -> dict:
    image = next((r.out / "data" / "coco" / "train2014").glob("*.jpg"))
    text = run([sys.executable, "-m", "pixellm", "chat", "--model", str(r.out / "export"), "--image", str(image),
                "--question", "Which objects are on the table?", "--out", str(r.out / "chat.png"),
                "--max-new-tokens", str(r.args.max_new_tokens)], cwd=r.out, timeout=r.args.stage_timeout)
    return {"answer": text.strip()[:500], "overlay": str(r.out / "chat.png")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "rehearsal")
    p.add_argument("--llm-layers", type=int, default=2, help="LLM depth of the random checkpoint (7B: 32)")
    p.add_argument("--steps", type=int, default=3, help="training steps per ZeRO stage (>= 3: the resume "
                   "stage kills a run after its step-2 checkpoint)")
    p.add_argument("--images", type=int, default=6, help="images per data source")
    p.add_argument("--max-new-tokens", type=int, default=8, help="generation budget in evaluation and chat")
    p.add_argument("--stage-timeout", type=float, default=1800, help="seconds before a stage counts as hung")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    r = Rehearsal(out, args)
    r.stage("checkpoint", lambda: checkpoint_stage(r))
    r.stage("data", lambda: data_stage(r))
    r.stage("data_pass", lambda: data_pass_stage(r), needs=("checkpoint", "data"))
    for stage in STAGES:
        r.stage(f"train_{stage}", lambda stage=stage: train_stage(r, stage), needs=("checkpoint", "data_pass"))
    r.stage("bf16_load", lambda: bf16_load_stage(r), needs=("checkpoint", "data"))
    r.stage("resume", lambda: resume_stage(r), needs=("train_zero2",))
    r.stage("export", lambda: export_stage(r), needs=("train_zero2",))
    r.stage("evaluate", lambda: evaluate_stage(r), needs=("export",))
    r.stage("chat", lambda: chat_stage(r), needs=("export",))
    failed = [n for n, s in r.report["stages"].items() if not s["ok"]]
    print(f"[rehearsal] {len(r.report['stages']) - len(failed)} of {len(r.report['stages'])} stages ok "
          f"in {r.report['total_s']} s; report: {out / 'report.json'}" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


def checkpoint_stage(r: Rehearsal) -> dict:
    """The random llava-1.5-7b-shaped checkpoint (kept when one of the same depth exists)."""
    from .checkpoint import write_checkpoint

    path = r.out / "checkpoint"
    config = path / "config.json"
    if not (config.is_file() and json.loads(config.read_text())["text_config"]["num_hidden_layers"] == r.args.llm_layers):
        write_checkpoint(path, llm_layers=r.args.llm_layers)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"path": str(path), "size_gb": round(size / 1e9, 2)}


def data_stage(r: Rehearsal) -> dict:
    from .data import write_rehearsal_data

    return {"written": write_rehearsal_data(r.out, images=r.args.images)}


if __name__ == "__main__":
    sys.exit(main())
