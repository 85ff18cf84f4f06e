"""MUSE loader: segmentation encodings, answers (text_answers vs template), image paths, ids."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from pixellm.constants import NO_TARGET_ANSWER, SEG_PLACEHOLDER
from pixellm.data.errors import DataError
from pixellm.data.masks import decode_mask, encode_rle
from pixellm.data.muse import MuseStats, load_muse, template_answer, validate_muse

H, W = 16, 20


def rect(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def uncompressed_rle(mask):
    """(H, W) bool -> COCO uncompressed RLE: column-major run lengths, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


# polygon with two parts: x in [2, 6) x y in [2, 5) and x in [10, 14) x y in [10, 14)
POLY = [[2, 2, 6, 2, 6, 5, 2, 5], [10, 10, 14, 10, 14, 14, 10, 14]]
POLY_MASK = rect(2, 5, 2, 6) | rect(10, 14, 10, 14)
UNC_MASK = rect(0, 3, 15, 20)
CMP_MASK = rect(8, 16, 0, 4)


def write_image(path, h=H, w=W, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (120, 30, 200)).save(path, format=fmt)


def muse_records():
    return [
        {"file_name": "a.jpg", "height": H, "width": W, "image_id": 42,
         "questions": ["Where can I make tea?", "What holds the spoon?", "Is there a dog?"],
         "answers": [
             [{"segmentation": POLY, "bbox": [2, 2, 12, 12], "category_name": "kettle",
               "rephrased_name": "the kettle on the stove"},
              {"segmentation": uncompressed_rle(UNC_MASK), "bbox": [15, 0, 5, 3], "category_name": "cup"}],
             [{"segmentation": encode_rle(CMP_MASK), "bbox": [0, 8, 4, 8], "category_name": "bowl",
               "rephrased_name": "the blue bowl."}],
             [],
         ],
         "text_answers": ["Use {seg} to boil water, then pour it into {seg}.", "Both {seg} and {seg}.", None]},
        {"file_name": "b.png", "height": H, "width": W,
         "questions": ["What is left?"],
         "answers": [[{"segmentation": POLY, "bbox": [0, 0, 1, 1], "category_name": "plate"},
                      {"segmentation": encode_rle(CMP_MASK), "bbox": [0, 0, 1, 1], "category_name": "fork",
                       "rephrased_name": "the fork near the plate"}]]},
        {"coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg", "height": H, "width": W,
         "questions": ["q"], "answers": [[{"segmentation": POLY, "bbox": [0, 0, 1, 1], "category_name": "tv"}]],
         "text_answers": ["The screen {seg}."]},
        {"coco_url": "http://images.cocodataset.org/train2017/000000000009.jpg", "height": H, "width": W,
         "image_id": "lvis-9", "questions": ["q"], "answers": [[]]},
    ]


@pytest.fixture
def muse(tmp_path):
    root = tmp_path / "images"
    write_image(root / "a.jpg")
    write_image(root / "train2014" / "b.png")
    write_image(root / "val2017" / "000000000139.jpg")
    write_image(root / "train2017" / "000000000009.jpg")
    ann = tmp_path / "muse_val.json"
    ann.write_text(json.dumps(muse_records()))
    return ann, root


def test_ids_paths_and_sizes(muse):
    ann, root = muse
    recs = load_muse(ann, root, split="val")
    assert [r.question_id for r in recs] == ["0:0", "0:1", "0:2", "1:0", "2:0", "3:0"]
    assert [r.image_id for r in recs] == [42, 42, 42, 1, 2, "lvis-9"]
    assert recs[0].image_path == root / "a.jpg"
    assert recs[3].image_path == root / "train2014" / "b.png"
    assert recs[4].image_path == root / "val2017" / "000000000139.jpg"
    assert recs[5].image_path == root / "train2017" / "000000000009.jpg"
    assert all(r.source == "muse" and (r.height, r.width) == (H, W) for r in recs)
    assert recs[0].question == "Where can I make tea?" and recs[0].extra["split"] == "val"


def test_three_segmentation_encodings_decode_to_expected_pixels(muse):
    ann, root = muse
    recs = load_muse(ann, root)
    poly, unc = recs[0].masks
    (cmp,) = recs[1].masks
    assert isinstance(poly, list) and len(poly) == 2
    assert isinstance(unc["counts"], list) and isinstance(cmp["counts"], str)
    np.testing.assert_array_equal(decode_mask(poly, H, W), POLY_MASK)
    np.testing.assert_array_equal(decode_mask(unc, H, W), UNC_MASK)
    np.testing.assert_array_equal(decode_mask(cmp, H, W), CMP_MASK)
    assert decode_mask(poly, H, W)[12, 12] and not decode_mask(poly, H, W)[7, 8]


def test_answers_from_text_answers_and_templates(muse, caplog):
    ann, root = muse
    stats = MuseStats()
    with caplog.at_level(logging.WARNING, logger="pixellm.data.muse"):
        recs = load_muse(ann, root, stats=stats)
    by_id = {r.question_id: r for r in recs}
    assert by_id["0:0"].answer == "Use <seg> to boil water, then pour it into <seg>."
    assert by_id["0:0"].phrases == ["the kettle on the stove", "cup"]
    # 2 placeholders, 1 instance: template from rephrased_name
    assert by_id["0:1"].answer == "The blue bowl <seg>."
    # zero instances
    assert by_id["0:2"].answer == NO_TARGET_ANSWER and by_id["0:2"].masks == []
    assert by_id["3:0"].answer == NO_TARGET_ANSWER
    # no text_answers: category_name, then rephrased_name
    assert by_id["1:0"].answer == "Plate <seg> and the fork near the plate <seg>."
    assert by_id["2:0"].answer == "The screen <seg>."
    for r in recs:
        assert r.answer.count(SEG_PLACEHOLDER) == len(r.masks) == r.num_targets
    assert stats == MuseStats(questions=6, from_text_answers=2, template_no_text=1, template_mismatch=1, no_target=2)
    assert any("1 of 6 questions" in m for m in caplog.messages)


def test_template_answer():
    assert template_answer(["the kettle on the stove", "the cup"]) == "The kettle on the stove <seg> and the cup <seg>."
    assert template_answer(["a", "b", "c"], capitalize=False) == "a <seg>, b <seg> and c <seg>."
    assert template_answer(["dog"]) == "Dog <seg>."


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: r.pop("questions"), "missing key 'questions'"),
    (lambda r: r.update(height="16"), "'height' must be a positive int"),
    (lambda r: r["answers"][0][0].pop("segmentation"), "question 0 instance 0: missing key 'segmentation'"),
    (lambda r: r.update(answers=[[]]), "one entry per question"),
    (lambda r: r.pop("file_name"), "'file_name' or 'coco_url'"),
    (lambda r: r.update(text_answers=["x"]), "'text_answers' must be a list of 3"),
])
def test_bad_record_raises_with_file_record_and_reason(tmp_path, mutate, reason):
    records = muse_records()
    mutate(records[0])
    ann = tmp_path / "bad.json"
    ann.write_text(json.dumps([muse_records()[1], records[0]]))
    with pytest.raises(DataError) as err:
        load_muse(ann, tmp_path)
    assert str(ann) in str(err.value) and "record 1" in str(err.value) and reason in str(err.value)


def test_bad_coco_url_and_truncated_json(tmp_path):
    ann = tmp_path / "m.json"
    ann.write_text(json.dumps([{"coco_url": "http://x/other/1.jpg", "height": 2, "width": 2,
                                "questions": [], "answers": []}]))
    with pytest.raises(DataError, match="record 0.*train2017"):
        load_muse(ann, tmp_path)
    ann.write_text(json.dumps(muse_records())[:100])
    with pytest.raises(DataError, match=r"line 1 column \d+: invalid JSON"):
        load_muse(ann, tmp_path)


def test_validate_muse_clean_and_faulty(muse):
    ann, root = muse
    (mismatch,) = validate_muse(ann, root)  # the fixture's deliberate {seg} mismatch
    assert mismatch.where == "record 0 question 1" and "2 {seg} placeholders but 1 instances" in mismatch.reason
    records = muse_records()
    records[0]["answers"][1][0]["segmentation"] = {"size": [H + 1, W], "counts": "abc"}
    records[0]["text_answers"] = None
    (root / "val2017" / "000000000139.jpg").unlink()
    write_image(root / "a.jpg", h=H, w=W + 1)
    ann.write_text(json.dumps(records))
    found = {(p.where, p.reason.split(":")[0].split(" is ")[0]) for p in validate_muse(ann, root)}
    assert ("record 0 question 1 instance 0", "bad segmentation") in found
    assert ("record 0", f"image {root / 'a.jpg'}") in found
    assert ("record 2", "image not found") in found
    assert len(found) == 3
