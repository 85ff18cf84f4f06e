"""`pixellm validate-data`: every fault named as `file: where: reason`, exit 0/1, no traceback."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixellm.data import validate
from pixellm.data.masks import encode_rle

H, W = 10, 12
POLY = [[1, 1, 5, 1, 5, 4, 1, 4]]
REPO = Path(__file__).resolve().parents[1]


def run_cli(argv, capsys):
    """Parse and dispatch exactly as `pixellm.cli.main` does, with only validate-data registered
    (so the test does not depend on the other subcommands' modules)."""
    parser = argparse.ArgumentParser(prog="pixellm")
    validate.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = int(args.func(args) or 0)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out.splitlines()


def record(name, **over):
    rec = {"file_name": name, "height": H, "width": W, "questions": ["what?"],
           "answers": [[{"segmentation": POLY, "bbox": [1, 1, 4, 3], "category_name": "box"}]],
           "text_answers": ["The box {seg}."]}
    rec.update(over)
    return rec


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        Image.new("RGB", (W, H), (1, 2, 3)).save(root / name)
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps([record(n) for n in ("a.png", "b.png", "c.png", "d.png")]))
    return clean, root


def muse_args(ann, root):
    return ["validate-data", "muse", "--annotations", str(ann), "--image-root", str(root)]


def test_clean_muse_exits_0(dataset, capsys):
    clean, root = dataset
    code, lines = run_cli(muse_args(clean, root), capsys)
    assert code == 0 and lines == ["4 records checked, 0 problems found, 0 warnings"]


def test_every_fault_is_named(dataset, tmp_path, capsys):
    _, root = dataset
    bad_rle = encode_rle(np.ones((H + 2, W), dtype=bool))
    records = [
        record("a.png", answers=[[{"segmentation": bad_rle, "bbox": [0, 0, 1, 1], "category_name": "box"}]]),
        {k: v for k, v in record("b.png").items() if k != "questions"},
        record("c.png", text_answers=["{seg} and {seg}"]),
        record("missing.png"),
    ]
    faulty = tmp_path / "faulty.json"
    faulty.write_text(json.dumps(records))
    code, lines = run_cli(muse_args(faulty, root), capsys)
    assert code == 1
    assert lines[-1] == "4 records checked, 4 problems found, 0 warnings"
    f = str(faulty)
    assert lines[0].startswith(f"{f}: record 0 question 0 instance 0: bad segmentation: RLE size [12, 12] differs")
    assert lines[1] == f"{f}: record 1: missing key 'questions'"
    assert lines[2].startswith(f"{f}: record 2 question 0: text_answers has 2 {{seg}} placeholders but 1 instances")
    assert lines[3].startswith(f"{f}: record 3: image not found: {root / 'missing.png'}")

    truncated = tmp_path / "truncated.json"
    truncated.write_text('[\n  {"file_name": "a.png",\n   "height": 10,')
    code, lines = run_cli(muse_args(truncated, root), capsys)
    assert code == 1
    assert lines[0].startswith(f"{truncated}: line 3 column") and "invalid JSON" in lines[0]
    assert lines[-1] == "0 records checked, 1 problems found, 0 warnings"


def test_missing_file_and_usage_errors(tmp_path, capsys):
    code, lines = run_cli(muse_args(tmp_path / "nope.json", tmp_path), capsys)
    assert code == 1 and lines[0].startswith(f"{tmp_path / 'nope.json'}: -: cannot read")
    assert run_cli(["validate-data", "muse", "--image-root", str(tmp_path)], capsys)[0] == 2
    assert run_cli(["validate-data", "refer", "--name", "refcoco"], capsys)[0] == 2


def write_refer(root, refs_payload, name="refcoco"):
    img_root = root / "images" / "mscoco" / "images" / "train2014"
    img_root.mkdir(parents=True)
    Image.new("RGB", (W, H)).save(img_root / "COCO_train2014_000000000001.jpg")
    (root / name).mkdir()
    (root / name / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W}],
        "annotations": [{"id": 7, "image_id": 1, "segmentation": POLY, "bbox": [1, 1, 4, 3], "category_id": 1}],
        "categories": [{"id": 1, "name": "box"}]}))
    refs = [{"ref_id": 0, "ann_id": 7, "image_id": 1, "split": "val", "category_id": 1,
             "sentences": [{"sent": "the box", "sent_id": 3}]}]
    if name == "grefcoco":
        refs[0]["ann_id"] = [7]
        refs.append({"ref_id": 1, "ann_id": [-1], "no_target": True, "image_id": 1, "split": "val",
                     "sentences": [{"sent": "a cat", "sent_id": 4}]})
        (root / name / "grefs(unc).json").write_text(json.dumps(refs))
    else:
        (root / name / "refs(unc).p").write_bytes(refs_payload(refs))


class Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_refer_and_grefcoco(tmp_path, capsys):
    good = tmp_path / "good"
    write_refer(good, lambda refs: pickle.dumps(refs, protocol=2))
    code, lines = run_cli(["validate-data", "refer", "--root", str(good), "--name", "refcoco"], capsys)
    assert code == 0 and lines == ["1 records checked, 0 problems found, 0 warnings"]

    gref = tmp_path / "gref"
    write_refer(gref, None, name="grefcoco")
    code, lines = run_cli(["validate-data", "grefcoco", "--root", str(gref), "--split", "val"], capsys)
    assert code == 0 and lines == ["2 records checked, 0 problems found, 0 warnings"]

    evil, pwned = tmp_path / "evil", tmp_path / "pwned"
    write_refer(evil, lambda refs: pickle.dumps(refs + [Evil(pwned)], protocol=2))
    code, lines = run_cli(["validate-data", "refer", "--root", str(evil), "--split-by", "unc"], capsys)
    assert code == 1 and f"refused global {os.system.__module__}.system" in lines[0]
    assert lines[0].startswith(str(evil / "refcoco" / "refs(unc).p"))
    assert not pwned.exists()


def test_custom_dispatches_to_validate_custom(tmp_path, capsys):
    ann = tmp_path / "c.jsonl"
    ann.write_text("{not json\n")
    code, lines = run_cli(["validate-data", "custom", "--annotations", str(ann), "--image-root", str(tmp_path)],
                          capsys)
    assert code == 1 and lines[-1].endswith("0 warnings") and str(ann) in lines[0]


def test_pixellm_cli_main_and_python_m(dataset, tmp_path, capsys):
    from pixellm import cli

    clean, root = dataset
    assert cli.main(muse_args(clean, root)) == 0
    assert capsys.readouterr().out.strip().endswith("0 problems found, 0 warnings")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([record("missing.png")]))
    res = subprocess.run([sys.executable, "-m", "pixellm", *muse_args(bad, root)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "record 0: image not found" in res.stdout
    assert "Traceback" not in res.stderr


def test_config_prints_token_lengths_and_how_many_answers_max_length_cuts(dataset, capsys):
    """With --config, the prompt+answer token lengths under that run's tokenizer and template,
    and how many answers its max_length would cut, so users can choose max_length from their data."""
    from pixellm.build import text_processor
    from pixellm.config import load_config
    from pixellm.data.muse import load_muse

    clean, root = dataset
    config = str(REPO / "configs" / "tiny_synthetic.yaml")
    proc = text_processor(load_config(config))
    lengths = sorted(len(proc.prompt_ids(r.question)) + len(proc.answer_ids(r.answer)) for r in load_muse(clean, root))
    code, lines = run_cli(muse_args(clean, root) + ["--config", config], capsys)
    assert code == 0 and lines[-1].startswith("4 records checked")
    assert lines[0].startswith("token lengths (prompt + answer, image tokens included) of 4 questions: ")
    assert f"max {lengths[-1]};" in lines[0] and "0 longer than max_length=160 would be cut" in lines[0]
    code, lines = run_cli(muse_args(clean, root) + ["--config", config, "--set", f"data.max_length={lengths[-1] - 1}"],
                          capsys)
    assert f"{lengths.count(lengths[-1])} longer than max_length={lengths[-1] - 1} would be cut" in lines[0]
