"""Training: DeepSpeed config filling, checkpoints (atomic latest, pruning, resume), export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_batch

from pixellm.config import ConfigError, TrainConfig
from pixellm.training.checkpoint import COMPLETE, LATEST, find_resume, prune, save_checkpoint
from pixellm.training.distributed import DistInfo
from pixellm.training.ds_config import fill_deepspeed_config, load_deepspeed_config

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def tiny_args(out: Path, synth: Path, *extra: str) -> list[str]:
    """A few-second run of the demo config on a small synthetic set, no workers."""
    return [
        str(REPO / "configs/tiny_synthetic.yaml"), f"train.output_dir={out}", f"data.synthetic.dir={synth}",
        "data.synthetic.num_train=40", "data.synthetic.num_val=4", "data.synthetic.num_compositional=4",
        "train.batch_size=4", "train.max_steps=6", "train.save_every=3", "train.warmup_steps=2",
        "train.log_every=1", "data.num_workers=0", "train.wandb_mode=disabled",
        f"train.deepspeed={REPO / 'ds_configs/zero2.json'}", *extra,
    ]


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json", "zero3_offload.json"])
def test_every_auto_field_is_filled_from_the_training_config(name):
    train = TrainConfig(batch_size=3, grad_accum=5, lr=2e-4, clip_grad=0.5, max_steps=100, warmup_steps=10)
    cfg = load_deepspeed_config(REPO / "ds_configs" / name, train, world_size=4, device=CPU)
    assert "auto" not in json.dumps(cfg)
    assert cfg["train_batch_size"] == 3 * 5 * 4
    assert cfg["train_micro_batch_size_per_gpu"] == 3 and cfg["gradient_accumulation_steps"] == 5
    assert cfg["gradient_clipping"] == 0.5 and cfg["optimizer"]["params"]["lr"] == 2e-4
    assert cfg["bf16"]["enabled"] is False  # CPU -> fp32
    assert cfg["optimizer"]["params"]["torch_adam"] is True  # no JIT-built fused Adam on CPU
    assert cfg["scheduler"] == {"type": "WarmupDecayLR", "params": {
        "warmup_min_lr": 0.0, "warmup_max_lr": 2e-4, "warmup_num_steps": 10, "total_num_steps": 100, "warmup_type": "linear"}}


def test_schedule_choice_and_unknown_auto_fields():
    cfg = fill_deepspeed_config({"scheduler": {}}, TrainConfig(schedule="cosine", max_steps=50), world_size=1, device=CPU)
    assert cfg["scheduler"]["type"] == "WarmupCosineLR"
    with pytest.raises(ConfigError, match="zero_optimization.mystery"):
        fill_deepspeed_config({"zero_optimization": {"mystery": "auto"}}, TrainConfig(), world_size=1, device=CPU)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeEngine:
    """Writes a checkpoint folder like DeepSpeed; can crash half way through."""

    def __init__(self, crash: bool = False):
        self.crash = crash

    def save_checkpoint(self, root, tag, client_state, save_latest, exclude_frozen_parameters=False):
        assert save_latest is False  # `latest` is ours, written atomically
        (Path(root) / tag).mkdir(parents=True)
        (Path(root) / tag / "mp_rank_00_model_states.pt").write_text("partial")
        if self.crash:
            raise RuntimeError("killed mid-save")


def test_a_crash_mid_save_leaves_latest_on_the_previous_complete_checkpoint(tmp_path):
    dist = DistInfo(0, 0, 1, CPU)
    save_checkpoint(FakeEngine(), tmp_path, 3, dist, keep_last=2)
    with pytest.raises(RuntimeError):
        save_checkpoint(FakeEngine(crash=True), tmp_path, 6, dist, keep_last=2)
    assert (tmp_path / "checkpoints" / LATEST).read_text() == "step_3"
    assert find_resume("auto", tmp_path).name == "step_3"
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        find_resume(str(tmp_path / "checkpoints" / "step_6"), tmp_path)


def test_keep_last_prunes_old_complete_checkpoints(tmp_path):
    dist = DistInfo(0, 0, 1, CPU)
    for step in (1, 2, 3, 4):
        save_checkpoint(FakeEngine(), tmp_path, step, dist, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_3", "step_4"]
    assert all((tmp_path / "checkpoints" / n / COMPLETE).is_file() for n in names)
    assert prune(tmp_path / "checkpoints", 0) == []


def test_resume_auto_with_no_checkpoint_starts_fresh(tmp_path):
    assert find_resume("auto", tmp_path) is None
    assert find_resume(None, tmp_path) is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 6-step run (checkpoints at 3 and 6)."""
    import train

    root = tmp_path_factory.mktemp("train")
    result = train.main(tiny_args(root / "full", root / "synth"))
    return root, result


def test_killed_and_resumed_run_repeats_the_uninterrupted_loss_sequence(trained):
    import train

    root, full = trained
    args = tiny_args(root / "resumed", root / "synth")
    first = train.main(args, stop_after=4)  # checkpoint at 3, killed after step 4
    second = train.main(args + ["train.resume=auto"])  # continues from step 3
    assert len(first.losses) == 4 and len(second.losses) == 3
    assert first.losses == pytest.approx(full.losses[:4], rel=1e-5)
    assert second.losses == pytest.approx(full.losses[3:], rel=1e-5)


def test_exported_checkpoint_reloads_with_the_trained_outputs(trained, tmp_path):
    from pixellm.export import export, load_from_checkpoint
    from pixellm.modeling.pixellm import PixelLM

    root, full = trained
    trained_model = full.model.eval()
    from_ckpt = load_from_checkpoint(root / "full").eval()
    export(root / "full", tmp_path / "merged")
    exported = PixelLM.from_pretrained(tmp_path / "merged").eval()
    batch = make_batch(trained_model, ["the red circle <seg> and the blue square <seg>."])
    with torch.no_grad():
        ref = trained_model(batch)
        for other in (from_ckpt, exported):
            out = other(batch)
            assert torch.allclose(out.hidden_states, ref.hidden_states, atol=1e-5)
            assert torch.allclose(out.mask_logits[0], ref.mask_logits[0], atol=1e-4)


def test_lora_merge_on_export_keeps_outputs(tmp_path):
    """With LoRA (the pretrained-model path) the adapters and codebook rows fold into the base."""
    import train
    from pixellm.export import export, load_from_checkpoint
    from pixellm.modeling.pixellm import PixelLM

    # 6 steps: the first 2 are warm-up, and 3 single batches of 4 are too noisy to show learning
    run = train.main(tiny_args(tmp_path / "lora", tmp_path / "synth", "model.train_llm=false", "train.max_steps=6",
                               "train.lr=1e-2"))
    unmerged = load_from_checkpoint(tmp_path / "lora").eval()
    export(tmp_path / "lora", tmp_path / "merged")
    merged = PixelLM.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.settings.lora.enabled is False
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    batch = make_batch(unmerged, ["the red circle <seg>."])
    with torch.no_grad():
        a, b = unmerged(batch), merged(batch)
    assert torch.allclose(a.hidden_states, b.hidden_states, atol=1e-4)
    assert torch.allclose(a.mask_logits[0], b.mask_logits[0], atol=1e-3)
    assert run.losses[-1] < run.losses[0]
    export(tmp_path / "lora", tmp_path / "kept", keep_lora=True)
    kept = PixelLM.from_pretrained(tmp_path / "kept")
    assert any("lora_B" in n for n, _ in kept.named_parameters())
    assert (tmp_path / "kept" / "adapter" / "trainable.safetensors").is_file()


def test_two_processes_zero2_agree_and_learn(tmp_path):
    """torchrun, 2 CPU processes (gloo), DeepSpeed ZeRO-2."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "train.py"), *tiny_args(out, tmp_path / "synth", "train.max_steps=8", "train.save_every=0",
                                              "train.lr=3e-3")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"summary_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)  # same weights
    assert ranks[0]["losses"] != ranks[1]["losses"]  # different data shards
    for r in ranks:
        assert sum(r["losses"][-2:]) < sum(r["losses"][:2])


def test_a_relative_deepspeed_path_resolves_next_to_the_config_then_in_the_package(tmp_path, monkeypatch):
    from pixellm.training.ds_config import PACKAGE_DS_CONFIGS, resolve_deepspeed_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    own = tmp_path / "configs" / "zero2.json"
    own.write_text("{}")
    assert resolve_deepspeed_path("zero2.json", tmp_path / "configs" / "run.yaml") == own  # next to the config
    assert resolve_deepspeed_path("ds_configs/zero3.json", tmp_path / "configs" / "run.yaml") == PACKAGE_DS_CONFIGS / "zero3.json"
    assert (REPO / "ds_configs" / "zero3.json").resolve() == (PACKAGE_DS_CONFIGS / "zero3.json").resolve()  # one copy
    with pytest.raises(ConfigError, match="train.deepspeed: nope.json not found"):
        resolve_deepspeed_path("nope.json", tmp_path / "configs" / "run.yaml")
