"""evaluate.py end to end: predictions in the contract format, metrics.json that `pixellm score`
reproduces exactly, teacher-forced and generated REFER protocols, exact sharding."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny

from pixellm.cli import main as cli_main
from pixellm.data.synthetic import generate_synthetic
from pixellm.evaluation.datasets import parse_dataset
from pixellm.evaluation.report import format_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    build_tiny(seed=2).save_pretrained(root / "model")
    generate_synthetic(root / "synth", 4, 6, 3, progress=False)
    return root


def run_evaluate(*args: str) -> dict:
    import evaluate

    return evaluate.main(list(args))


def test_score_reproduces_metrics_json_exactly(setup, capsys):
    out = setup / "out"
    results = run_evaluate(str(setup / "model"), "--dataset", f"custom:{setup / 'synth' / 'val.jsonl'}",
                           "--image-root", str(setup / "synth"), "--out", str(out), "eval.max_new_tokens=12")
    folder = out / "custom_val"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == results["custom:val"]
    assert {"gIoU_targets", "cIoU_targets", "N-acc", "num_no_target"} <= set(metrics)
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == metrics["num_questions"] == 18  # every question has a record, none twice
    rec = json.loads(lines[0])
    assert set(rec) == {"image_id", "question_id", "text", "masks", "scores"}
    capsys.readouterr()
    code = cli_main(["score", "custom", "--annotations", str(setup / "synth" / "val.jsonl"),
                     "--image-root", str(setup / "synth"), "--predictions", str(folder / "predictions.jsonl")])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == metrics


def test_dataset_names_resolve_to_the_readme_layout():
    ds = parse_dataset("refcocog:test", data_root="/d")
    assert (ds.source.root, ds.source.name, ds.source.split_by, ds.source.split) == ("/d/refer_seg", "refcocog", "umd", "test")
    assert ds.modes == ("teacher_forced", "generated") and ds.protocol == "refer"
    assert parse_dataset("refcocog@google:val").source.split_by == "google"
    muse = parse_dataset("muse:test_many", data_root="/d")
    assert muse.source.annotations == "/d/muse/muse_test_many.json" and muse.modes == ("generated",)
    with pytest.raises(ValueError, match="NAME:SPLIT"):
        parse_dataset("refcoco")
    with pytest.raises(ValueError, match="unknown dataset"):
        parse_dataset("coco:val")


def test_table_lists_each_dataset_and_metric():
    table = format_table({"a": {"gIoU": 0.5, "cIoU": None, "num_questions": 3}})
    assert "gIoU" in table and "0.5000" in table and " - " in table
    assert "N-acc" not in table  # only the columns the results have


def test_table_shows_giou_over_targets_and_nacc():
    table = format_table({
        "mixed": {"gIoU": 0.6, "gIoU_targets": 0.0, "N-acc": 1.0, "num_questions": 5},
        "refcoco": {"gIoU": 0.7, "gIoU_targets": 0.7, "N-acc": None, "num_questions": 3},
    })
    header, _, mixed, refcoco, legend = table.splitlines()
    assert header.split() == ["dataset", "gIoU", "gIoU_tgt", "N-acc", "num_questions"]
    assert mixed.split() == ["mixed", "0.6000", "0.0000", "1.0000", "5"]
    assert refcoco.split() == ["refcoco", "0.7000", "0.7000", "-", "3"]
    assert "gIoU_tgt = gIoU over questions with a target" in legend and "N-acc" in legend


def test_sharded_evaluation_over_two_processes_matches_one_process(setup):
    """torchrun with 2 CPU processes: images are split between ranks and gathered exactly."""
    single = setup / "single"
    run_evaluate(str(setup / "model"), "--dataset", f"custom:{setup / 'synth' / 'val.jsonl'}",
                 "--image-root", str(setup / "synth"), "--out", str(single), "eval.max_new_tokens=12")
    sharded = setup / "sharded"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "evaluate.py"), str(setup / "model"), "--dataset", f"custom:{setup / 'synth' / 'val.jsonl'}",
           "--image-root", str(setup / "synth"), "--out", str(sharded), "eval.max_new_tokens=12"]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = (single / "custom_val" / "predictions.jsonl").read_text()
    b = (sharded / "custom_val" / "predictions.jsonl").read_text()
    assert a == b
    assert json.loads((single / "custom_val" / "metrics.json").read_text()) == json.loads(
        (sharded / "custom_val" / "metrics.json").read_text())
