"""Fine-tuning on custom data: a file with good and bad records trains, every bad record is named
in skipped.jsonl; user mistakes are one `error:` line with an exit status; `model.init_from`
starts from an exported PixelLM with a fresh schedule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
H, W = 40, 48
SEED = 2  # its first 12 draws include record 0 (checked below), which scans every train-stage bad one
POLY = [[4, 4, 20, 4, 20, 30, 4, 30]]


def conv(question="What is there?", answer="The block <seg>.", masks=(POLY,)):
    return {"question": question, "answer": answer, "masks": list(masks)}


# (line kind, JSON text or record, stage at which it is refused, words of the reason)
BAD_AT_TRAIN = [
    ("nan polygon", {"image": "a.jpg", "conversations": [conv(masks=[[[4, 4, float("nan"), 4, 20, 30]]])]}, "not finite"),
    ("short rle", {"image": "a.jpg", "conversations": [conv(masks=[{"size": [H, W], "counts": [10, 20]}])]}, "sum to 30"),
    ("negative rle", {"image": "a.jpg", "conversations": [conv(masks=[{"size": [H, W], "counts": [1930, -10]}])]}, ">= 0"),
    ("size not a list", {"image": "a.jpg", "conversations": [conv(masks=[{"size": "40x48", "counts": [1920]}])]}, "'size'"),
    ("truncated image", {"image": "truncated.jpg", "conversations": [conv()]}, "does not decode"),
]
BAD_AT_LOAD = [
    ("bad json", '{"image": "a.jpg", "conversations": [', "invalid JSON"),
    ("seg count", {"image": "a.jpg", "conversations": [conv(answer="A <seg> and B <seg>.")]}, "2 <seg> but there are 1 masks"),
    ("codebook token", {"image": "a.jpg", "conversations": [conv(answer="It [SEG0].", masks=[])]}, "codebook token [SEG0]"),
    ("missing image", {"image": "missing.jpg", "conversations": [conv()]}, "not found"),
]
GOOD = [
    {"image": "a.jpg", "conversations": [conv(), conv("Anything blue?", "No.", masks=[])]},
    {"image": "b.jpg", "conversations": [conv("<image>\nWhich block?", "This one <seg>.")]},  # LLaVA-style tag: stripped
    {"image": "b.jpg", "conversations": [conv()]},
]


def write_dataset(root: Path) -> tuple[Path, dict[str, int]]:
    """custom JSONL with the train-stage bad lines first (so any draw of line 1 scans them all),
    the load-stage bad lines, then the good ones. Returns (file, line number of each kind)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "truncated.jpg"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), np.uint8)).save(root / name, quality=95)
    data = (root / "truncated.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    lines, where = [], {}
    for kind, record, _ in BAD_AT_TRAIN + BAD_AT_LOAD:
        lines.append(record if isinstance(record, str) else json.dumps(record))
        where[kind] = len(lines)
    lines += [json.dumps(r) for r in GOOD]
    path = root / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, where


def write_config(root: Path, annotations: Path, **train) -> Path:
    cfg = {
        "model": {"preset": "tiny", "image_size": 64, "decoder_layers": [-2, 1],
                  "decoder": {"dim": 64, "depth": 2, "heads": 4, "mlp_dim": 128}},
        "data": {"max_length": 200, "num_workers": 0, "seed": SEED,
                 "train": [{"type": "custom", "annotations": str(annotations), "image_root": str(annotations.parent)}]},
        # a bare file name: found neither next to this config nor in the working directory, so the
        # package's own ds_configs/ supplies it
        "train": {"batch_size": 2, "max_steps": 6, "warmup_steps": 2, "lr": 1e-3, "log_every": 1, "precision": "fp32",
                  "wandb_mode": "disabled", "deepspeed": "zero2.json", "output_dir": str(root / "run"), **train},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    path, where = write_dataset(root / "data")
    return root, path, where


def test_a_run_over_good_and_bad_records_finishes_and_names_every_bad_one(dataset):
    import train
    from pixellm.data.mixture import MixtureDataset

    root, path, where = dataset
    mixture = MixtureDataset([list(range(len(BAD_AT_TRAIN) + 4))], [1.0], seed=SEED)  # 9 usable-looking records
    assert 0 in [mixture.locate(i)[1] for i in range(6 * 2)]  # the premise: the sampler reaches line 1
    result = train.main([str(write_config(root, path))])
    assert len(result.losses) == 6 and all(np.isfinite(result.losses))
    entries = [json.loads(line) for line in (root / "run" / "skipped.jsonl").read_text().splitlines()]
    for kind, _, words in BAD_AT_LOAD:
        line = where[kind]
        (hit,) = [e for e in entries if e["stage"] == "load" and e["where"].startswith(f"line {line}")]
        assert words in hit["reason"] and hit["file"] == str(path), (kind, hit)
    for kind, _, words in BAD_AT_TRAIN:
        line = where[kind]
        hits = [e for e in entries if e["stage"] == "train" and e["where"] == f"question {line}:0"]
        assert len(hits) == 1 and words in hits[0]["reason"], (kind, entries)
    assert len(entries) == len(BAD_AT_LOAD) + len(BAD_AT_TRAIN)  # each bad record once, no good one


def test_validation_reports_every_bad_line_and_warns_about_empty_answers_and_masks(dataset, tmp_path, capsys):
    from pixellm.cli import main as cli

    root, path, where = dataset
    extra = tmp_path / "extra.jsonl"
    extra.write_text(path.read_text() + json.dumps({"image": "a.jpg", "conversations": [
        conv(answer="  ", masks=[]), conv(masks=[[[1, 1, 2, 1, 1, 1]]])]}) + "\n")
    assert cli(["validate-data", "custom", "--annotations", str(extra), "--image-root", str(path.parent)]) == 1
    out = capsys.readouterr().out.splitlines()
    for kind, _, words in BAD_AT_TRAIN + BAD_AT_LOAD:
        assert any(f"line {where[kind]}" in line and words in line for line in out), (kind, out)
    warnings = [line for line in out if line.startswith("warning: ")]
    assert len(warnings) == 2 and "the answer is empty" in warnings[0] and "the mask is empty" in warnings[1]
    assert out[-1].endswith(f"{len(BAD_AT_TRAIN) + len(BAD_AT_LOAD)} problems found, 2 warnings")


def _fails(capsys, argv: list[str], code: int, words: str) -> str:
    import train

    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == code and "error: " in err and words in err and "Traceback" not in err, err
    return err


def test_user_mistakes_are_one_error_line_with_an_exit_status_before_the_model_is_built(dataset, tmp_path, capsys):
    root, path, _ = dataset
    config = write_config(tmp_path, path)
    run = tmp_path / "run"
    _fails(capsys, [str(config), "train.batch_size=0"], 2, "train.batch_size must be >= 1, got 0")
    _fails(capsys, [str(config), "train.max_steps=-1"], 2, "train.max_steps must be >= 1, got -1")
    _fails(capsys, [str(config), "train.deepspeed=nowhere.json"], 2, "train.deepspeed: nowhere.json not found")
    missing = json.dumps([{"type": "custom", "annotations": str(tmp_path / "none.jsonl"), "image_root": str(tmp_path)}])
    _fails(capsys, [str(config), f"data.train={missing}"], 1, "none.jsonl")
    assert not (run / "model").exists()  # the data problem surfaced before the model was built
    _fails(capsys, [str(config), "model.llava_path=" + str(tmp_path)], 2, "is not a llava-hf checkpoint: no config.json")


def test_a_used_run_folder_needs_resume_or_overwrite(dataset, tmp_path, capsys):
    import train

    root, path, _ = dataset
    config = write_config(tmp_path, path, max_steps=1)
    train.main([str(config)])
    _fails(capsys, [str(config)], 2, "already holds a run")
    stale = tmp_path / "run" / "stale.txt"
    stale.write_text("from an older run")
    missing = json.dumps([{"type": "custom", "annotations": str(tmp_path / "none.jsonl"), "image_root": str(tmp_path)}])
    _fails(capsys, [str(config), "train.overwrite=true", f"data.train={missing}"], 1, "none.jsonl")
    assert stale.is_file()  # a start that fails on its data leaves the old run alone
    train.main([str(config), "train.overwrite=true"])
    assert not stale.exists() and len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_init_from_an_exported_model_starts_from_its_weights_with_a_fresh_schedule(dataset, tmp_path, capsys):
    """The first loss of the fine-tuning run equals the exported model's loss on the same batch
    (fresh LoRA adapters start at zero), and the schedule starts again from warm-up."""
    import train
    from pixellm.config import load_config
    from pixellm.data.skips import SkipLog
    from pixellm.export import export
    from pixellm.modeling.pixellm import PixelLM
    from pixellm.training.distributed import DistInfo
    from pixellm.training.setup import build_mixture, load_training_records, make_loader

    root, path, _ = dataset
    first = write_config(tmp_path / "a", path, max_steps=4, lr=1e-2)
    train.main([str(first)])
    export(tmp_path / "a" / "run", tmp_path / "exported")
    _fails(capsys, [str(first), f"model.llava_path={tmp_path / 'exported'}", "train.overwrite=true"], 2,
           f"set model.init_from: {tmp_path / 'exported'}")

    second = write_config(tmp_path / "b", path, max_steps=2, warmup_steps=2, lr=1e-3)
    tuned = train.main([str(second), f"model.init_from={tmp_path / 'exported'}"])
    cfg = load_config(second, [f"model.init_from={tmp_path / 'exported'}"])
    exported = PixelLM.from_pretrained(tmp_path / "exported").train()
    sources = load_training_records(cfg, SkipLog(None))
    loader = make_loader(build_mixture(cfg, exported, sources), cfg, DistInfo(0, 0, 1, torch.device("cpu")), 0,
                         exported.tokenizer.pad_token_id)
    with torch.no_grad():
        reference = exported(next(iter(loader)), loss_weights=cfg.train.loss).loss.total.item()
    assert tuned.losses[0] == pytest.approx(reference, rel=1e-5)
    logged = [json.loads(line) for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2] and logged[0]["lr"] < 1e-3  # warm-up again, from step 1
    assert any("lora_" in n for n, p in tuned.model.named_parameters() if p.requires_grad)


def test_evaluate_skips_bad_records_and_names_them(dataset, tmp_path):
    """evaluate.py over the same file: no crash on the truncated image or the broken masks; each
    bad record is in <out>/skipped.jsonl with its reason, and the metrics count them."""
    import evaluate

    root, path, where = dataset
    config = write_config(tmp_path, path)
    results = evaluate.main([str(config), "--dataset", f"custom:{path}", "--out", str(tmp_path / "eval"),
                             "eval.max_new_tokens=4"])
    entries = [json.loads(line) for line in (tmp_path / "eval" / "skipped.jsonl").read_text().splitlines()]
    stages = {e["where"].split(",")[0]: e["stage"] for e in entries}
    assert stages == {**{f"line {where[k]}": "load" for k, _, _ in BAD_AT_LOAD},
                      **{f"question {where[k]}:0": "eval" if k == "truncated image" else "score" for k, _, _ in BAD_AT_TRAIN}}
    metrics = results["custom:train"]
    assert metrics["num_skipped"] == len(BAD_AT_TRAIN) and metrics["num_questions"] == 4 + 1  # 4 good + truncated
