"""ReasonSeg in LISA's layout: ground truth as LISA draws it, loaders, validate-data, score and
evaluate.py. Every expected number below is counted by hand on 10x10 or 12x12 images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixellm.cli import main as cli_main
from pixellm.data.errors import DataError
from pixellm.data.masks import decode_mask, encode_rle
from pixellm.data.reasonseg import ground_truth, load_reasonseg

REPO = Path(__file__).resolve().parents[1]


def square(x0, y0, x1, y1, label="target") -> dict:
    return {"label": label, "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "shape_type": "polygon"}


def write(folder: Path, stem: str, shapes: list, text=("the thing",), is_sentence=False, size=(10, 10)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(folder / f"{stem}.jpg")
    (folder / f"{stem}.json").write_text(json.dumps({"text": list(text), "is_sentence": is_sentence, "shapes": shapes}))


def test_polygons_are_drawn_largest_first_so_a_smaller_ignore_region_wins_where_they_overlap():
    target, ignore = square(1, 1, 6, 6), square(4, 4, 8, 8, label="Ignore")  # 6x6 = 36 and 5x5 = 25 pixels
    for shapes in ([target, ignore], [ignore, target]):  # file order does not matter: area does
        gt = ground_truth(shapes, 10, 10)
        assert (gt == 1).sum() == 36 - 9 and (gt == 255).sum() == 25 and (gt == 0).sum() == 100 - 27 - 25
        assert gt[5, 5] == 255 and gt[1, 1] == 1 and gt[6, 6] == 255 and gt[8, 8] == 255 and gt[9, 9] == 0
    big_ignore, small_target = square(0, 0, 7, 7, label="ignore"), square(2, 2, 4, 4)  # 64 and 9 pixels
    gt = ground_truth([small_target, big_ignore], 10, 10)
    assert (gt == 1).sum() == 9 and (gt == 255).sum() == 64 - 9  # the target is drawn last, on top


def test_flag_shapes_are_skipped_and_float_points_are_truncated():
    flagged = ground_truth([square(1, 1, 3, 3), square(0, 0, 9, 9, label="FLAG")], 10, 10)
    assert (flagged == 1).sum() == 9 and (flagged == 255).sum() == 0
    floats = ground_truth([{"label": "t", "points": [[1.9, 1.99], [3.7, 1.2], [3.99, 3.5], [1.1, 3.9]]}], 10, 10)
    assert np.array_equal(floats, ground_truth([square(1, 1, 3, 3)], 10, 10))


def test_a_polygon_covers_its_outline_too():
    """A triangle's slanted edge: fillPoly alone leaves some outline pixels out; LISA adds them
    with polylines, so the mask holds every pixel of the drawn outline."""
    import cv2

    points = np.array([[0, 0], [9, 2], [2, 9]])
    gt = ground_truth([{"label": "t", "points": points.tolist()}], 10, 10)
    outline = np.zeros((10, 10), np.uint8)
    cv2.polylines(outline, [points.reshape(-1, 1, 2).astype(np.int32)], True, 1, 1)
    assert (gt[outline > 0] == 1).all() and gt[0, 0] == 1 and gt[2, 9] == 1 and gt[9, 2] == 1


@pytest.fixture()
def split(tmp_path) -> Path:
    """val: a short query (2 texts), a long one, and an image whose only shape is `ignore`."""
    val = tmp_path / "reasonseg" / "val"
    write(val, "a_short", [square(0, 0, 4, 4), square(3, 3, 5, 5, "ignore")], text=("the cup", "a mug"))
    write(val, "b_long", [square(5, 5, 9, 9)], text=("Where would you sit after dinner?",), is_sentence=True)
    write(val, "c_ignore_only", [square(2, 2, 7, 7, "ignore"), square(0, 0, 1, 1, "flag")])
    return tmp_path / "reasonseg"


def test_evaluation_scores_the_first_query_of_each_image_and_training_uses_every_query(split):
    ev = load_reasonseg(split, "val", mode="eval")
    assert [r.question_id for r in ev] == ["a_short:0", "b_long:0", "c_ignore_only:0"]
    assert [r.image_id for r in ev] == ["a_short", "b_long", "c_ignore_only"]
    assert ev[0].question == "What is the cup in this image? Please output segmentation mask."
    assert ev[1].question == "Where would you sit after dinner? Please output segmentation mask."
    assert ev[0].answer == "It is <seg>." and len(ev[0].masks) == 1 and ev[2].masks == []
    target = decode_mask(ev[0].masks[0], 10, 10)
    assert target.sum() == 25 - 4  # the 5x5 square less the 2x2 corner under the (smaller) ignore square
    assert [r.question_id for r in load_reasonseg(split, "val", mode="eval", all_queries=True)][:2] == ["a_short:0", "a_short:1"]
    skipped = []
    train = load_reasonseg(split, "val", mode="train", skipped=skipped)
    assert [r.question_id for r in train] == ["a_short:0", "a_short:1", "b_long:0"]
    assert len(skipped) == 1 and "c_ignore_only.json" in skipped[0].file and "no target pixel" in skipped[0].reason
    with pytest.raises(DataError, match="no target pixel"):
        load_reasonseg(split, "val", mode="train")


def _prediction(qid: str, mask: np.ndarray) -> dict:
    rle = encode_rle(mask)
    return {"image_id": qid.split(":")[0], "question_id": qid, "text": "It is [SEG0].", "masks": [rle], "scores": [1.0]}


def test_score_leaves_ignore_pixels_out_and_reports_short_and_long_queries(split, tmp_path, capsys):
    a = np.zeros((10, 10), bool)
    a[0:5, 0:3] = True  # 15 px: 15 inside the target (21 px), none under the ignore square
    a[4, 4] = True  # ignore pixel: in neither intersection nor union
    c = np.zeros((10, 10), bool)
    c[3:6, 3:6] = True  # only ignore pixels: an empty prediction for an empty ground truth
    rows = [_prediction("a_short:0", a), _prediction("c_ignore_only:0", c),
            _prediction("a_short:1", a)]  # not scored (only the first query is): ignored, counted
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="ignored 1 prediction"):
        code = cli_main(["score", "reasonseg", "--root", str(split), "--split", "val", "--predictions", str(path)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    # a_short: I 15, U 21 -> 15/21; b_long: no prediction -> I 0, U 25 -> 0; c: empty vs empty -> 1
    assert out["gIoU"] == pytest.approx((15 / 21 + 0 + 1) / 3) and out["cIoU"] == pytest.approx(15 / (21 + 25))
    assert out["short"] == {"gIoU": pytest.approx((15 / 21 + 1) / 2), "cIoU": pytest.approx(15 / 21),
                            "num_questions": 2, "intersection": 15, "union": 21}
    assert out["long"] == {"gIoU": 0.0, "cIoU": 0.0, "num_questions": 1, "intersection": 0, "union": 25}
    assert out["num_missing_predictions"] == 1 and out["num_ignored_predictions"] == 1
    assert out["num_questions"] == 3 and out["empty_pair_iou"] == 1 and out["protocol"] == "reasonseg"
    assert out["split"] == "val"


def test_validate_data_names_every_malformed_file(split, capsys):
    val = split / "val"
    assert cli_main(["validate-data", "reasonseg", "--root", str(split), "--split", "val"]) == 0
    assert "3 records checked, 0 problems found" in capsys.readouterr().out
    (val / "b_long.jpg").unlink()  # missing image
    (val / "d_bad.json").write_text("{not json")
    Image.new("RGB", (10, 10)).save(val / "d_bad.jpg")
    write(val, "e_two_points", [{"label": "t", "points": [[0, 0], [3, 3]]}])
    write(val, "f_no_text", [square(0, 0, 3, 3)], text=())
    Image.new("RGB", (10, 10)).save(val / "g_orphan.jpg")
    assert cli_main(["validate-data", "reasonseg", "--root", str(split), "--split", "val"]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "records checked" not in line]
    assert any("b_long.json: image: no b_long.jpg" in line for line in lines)
    assert any("d_bad.json: -: not readable JSON" in line for line in lines)
    assert any("e_two_points.json: shapes[0].points: a polygon needs at least 3 points, got 2" in line for line in lines)
    assert any("f_no_text.json: text: missing or empty" in line for line in lines)
    assert any("g_orphan.jpg: -: image without g_orphan.json" in line for line in lines)
    assert len(lines) == 5 and "6 records checked, 5 problems found" in out


def test_evaluate_py_runs_reasonseg_end_to_end_with_a_tiny_model(split, tmp_path):
    from conftest import build_tiny

    import evaluate

    build_tiny(seed=2).save_pretrained(tmp_path / "model")
    results = evaluate.main([str(tmp_path / "model"), "--dataset", "reasonseg:val", "--data-root", str(split.parent),
                             "--out", str(tmp_path / "eval"), "eval.max_new_tokens=8"])
    metrics = results["reasonseg:val"]
    assert metrics["num_questions"] == 3 and metrics["protocol"] == "reasonseg"
    assert metrics["short"]["num_questions"] == 2 and metrics["long"]["num_questions"] == 1
    lines = (tmp_path / "eval" / "reasonseg_val" / "predictions.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["question_id"] for line in lines) == ["a_short:0", "b_long:0", "c_ignore_only:0"]
