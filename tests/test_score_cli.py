"""`score_predictions` and the `pixellm score` command on a tiny custom-JSONL dataset."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from pixellm.data.masks import encode_rle
from pixellm.data.records import QARecord
from pixellm.evaluation.predictions import prediction_record, write_predictions
from pixellm.evaluation.score import register, score_predictions


def m(*rows: str) -> np.ndarray:
    return np.array([[c == "1" for c in r] for r in rows], dtype=bool)


# 4x4 image. Targets: A = rows 0-1 x cols 0-1 (4 px), B = col 3 (4 px, a PNG), C = row 3 cols 0-1 (2 px)
A = m("11..", "11..", "....", "....")
B = m("...1", "...1", "...1", "...1")
C = m("....", "....", "....", "11..")
B_HALF = m("...1", "...1", "....", "....")

# Expected (muse/custom protocol):
#   "1:0": GT [A],    pred [A]      -> IoU 1   (I 4, U 4)
#   "1:1": GT [B, C], pred [B_HALF] -> B: IoU 2/4 (I 2, U 4); C unmatched: IoU 0 (U 2)
#   "2:0": no GT,     pred []       -> empty vs empty: IoU 1 (I 0, U 0)
# gIoU = (1 + 0.5 + 0 + 1) / 4 = 0.625 ; cIoU = 6 / 10 = 0.6
# target questions only ("1:0", "1:1"): gIoU_targets = (1 + 0.5 + 0) / 3 = 0.5, cIoU 6 / 10
# "2:0" is the one no-target question, answered with no mask: N-acc = 1 / 1
EXPECTED = {"gIoU": 0.625, "cIoU": 0.6, "num_pairs": 4, "num_questions": 3,
            "gIoU_targets": 0.5, "cIoU_targets": 0.6, "N-acc": 1.0, "num_no_target": 1}


@pytest.fixture
def dataset(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "img.png")
    Image.fromarray(B.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    lines = [
        {"image": "img.png", "conversations": [
            {"question": "Where is A?", "answer": "A <seg>.", "masks": [encode_rle(A)]},
            {"question": "B and C?", "answer": "B <seg> and C <seg>.", "masks": ["mask.png", encode_rle(C)]},
        ]},
        {"image": "img.png", "conversations": [{"question": "Any D?", "answer": "There is no D."}]},
    ]
    ann = tmp_path / "data.jsonl"
    ann.write_text("".join(json.dumps(x) + "\n" for x in lines))
    preds = tmp_path / "preds.jsonl"
    write_predictions(preds, [
        prediction_record(1, "1:0", "A [SEG]", [A]),
        prediction_record(1, "1:1", "B [SEG]", [B_HALF]),
        prediction_record(2, "2:0", "There is no D.", []),
        prediction_record(9, "9:9", "not in the split", [A]),
    ])
    return tmp_path, ann, preds


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pixellm")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_score_predictions_on_records(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "img.png")
    Image.fromarray(B.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    common = dict(source="custom", image_path=tmp_path / "img.png", image_id=1, question="?")
    records = [
        QARecord(question_id="1:0", answer="<seg>", masks=[encode_rle(A)], height=4, width=4, **common),
        # height/width None: the size is read from the image header
        QARecord(question_id="1:1", answer="<seg> <seg>", masks=["mask.png", encode_rle(C)],
                 mask_root=tmp_path, **common),
        QARecord(question_id="2:0", answer="none", height=4, width=4, **common),
    ]
    preds = {
        "1:0": prediction_record(1, "1:0", "", [A]),
        "1:1": prediction_record(1, "1:1", "", [B_HALF]),
        "2:0": prediction_record(1, "2:0", "", []),
    }
    res = score_predictions("custom", records, preds)
    assert {k: res[k] for k in EXPECTED} == pytest.approx(EXPECTED)
    assert (res["intersection"], res["union"]) == (6, 10)
    # drop the "1:1" prediction: scored as zero masks -> pairs 1, 0, 0, 1 ; cIoU = 4 / 10
    del preds["1:1"]
    res = score_predictions("custom", records, preds)
    assert res["gIoU"] == pytest.approx(0.5) and res["cIoU"] == pytest.approx(0.4)
    # over the target questions: pairs 1, 0, 0 -> 1/3 ; cIoU 4 / 10 (the empty pair adds 0/0)
    assert res["gIoU_targets"] == pytest.approx(1 / 3) and res["cIoU_targets"] == pytest.approx(0.4)
    # a mask for the no-target question "2:0": N-acc 0, gIoU_targets unchanged
    preds["2:0"] = prediction_record(1, "2:0", "", [C])
    res = score_predictions("custom", records, preds)
    assert res["N-acc"] == 0.0 and res["gIoU_targets"] == pytest.approx(1 / 3)
    assert res["gIoU"] == pytest.approx(1 / 4)  # the empty pair became an IoU-0 prediction
    assert res["num_missing_predictions"] == 1
    with pytest.raises(ValueError, match="occurs twice"):
        score_predictions("custom", records + records[:1], preds)


def test_score_cli_custom(dataset, capsys):
    root, ann, preds = dataset
    args = parse(["score", "custom", "--annotations", str(ann), "--image-root", str(root),
                  "--predictions", str(preds)])
    with pytest.warns(UserWarning, match="ignored 1 prediction"):
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    res = json.loads(out)
    assert {k: res[k] for k in EXPECTED} == pytest.approx(EXPECTED)
    assert res["num_ignored_predictions"] == 1
    assert res["protocol"] == "custom"
    assert list(res) == sorted(res)  # deterministic key order


def test_score_cli_missing_flags(dataset, capsys):
    _, _, preds = dataset
    args = parse(["score", "refer", "--predictions", str(preds), "--name", "refcoco"])
    with pytest.raises(SystemExit) as exc:
        args.func(args)
    assert exc.value.code == 2
    assert "--root, --split-by" in capsys.readouterr().err


def test_score_cli_bad_predictions(dataset, capsys):
    root, ann, _ = dataset
    bad = root / "bad.jsonl"
    bad.write_text('{"question_id": "1:0", "masks": [{"size": [4, 4], "counts": 7}]}\n')
    args = parse(["score", "custom", "--annotations", str(ann), "--image-root", str(root),
                  "--predictions", str(bad)])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert f"{bad}: line 1: masks[0]: 'counts' must be a compressed RLE string" in err
