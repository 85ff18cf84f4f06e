"""REFER (refs pickle + instances.json), gRefCOCO and the restricted unpickler."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from pixellm.constants import NO_TARGET_ANSWER
from pixellm.data.errors import DataError
from pixellm.data.grefcoco import load_grefcoco, union_mask_spec, validate_grefcoco
from pixellm.data.masks import decode_mask, encode_rle
from pixellm.data.refer import load_refer, validate_refer
from pixellm.data.safe_pickle import load_refs_pickle

H, W = 12, 16


def rect(y0, y1, x0, x1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def poly(y0, y1, x0, x1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


ANNS = {1: poly(0, 4, 0, 4), 2: poly(6, 10, 8, 12), 3: encode_rle(rect(2, 5, 10, 15)), 4: poly(1, 3, 1, 3)}
MASKS = {1: rect(0, 4, 0, 4), 2: rect(6, 10, 8, 12), 3: rect(2, 5, 10, 15), 4: rect(1, 3, 1, 3)}
ANN_IMAGE = {1: 100, 2: 100, 3: 100, 4: 200}


def sent(sid, text):
    return {"sent": text, "sent_id": sid, "tokens": text.split(), "raw": text}


REFS = [
    {"ref_id": 0, "ann_id": 1, "image_id": 100, "split": "train", "category_id": 1,
     "file_name": "COCO_train2014_000000000100_1.jpg", "sentences": [sent(10, "left man"), sent(11, "man in red")]},
    {"ref_id": 1, "ann_id": 2, "image_id": 100, "split": "train", "category_id": 1,
     "file_name": "COCO_train2014_000000000100_2.jpg", "sentences": [sent(12, "right dog")]},
    {"ref_id": 2, "ann_id": 3, "image_id": 100, "split": "train", "category_id": 2,
     "file_name": "COCO_train2014_000000000100_3.jpg", "sentences": [sent(13, "blue cup")]},
    {"ref_id": 3, "ann_id": 4, "image_id": 200, "split": "val", "category_id": 2,
     "file_name": "COCO_train2014_000000000200_4.jpg", "sentences": [sent(14, "small box")]},
]


def write_instances(folder, image_root):
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": H, "width": W} for i in (100, 200)]
    for im in images:
        image_root.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H), (10, 200, 30)).save(image_root / im["file_name"])
    anns = [{"id": a, "image_id": ANN_IMAGE[a], "segmentation": s, "bbox": [0, 0, 1, 1], "category_id": 1,
             "iscrowd": int(isinstance(s, dict))} for a, s in ANNS.items()]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))


@pytest.fixture
def refer_root(tmp_path):
    root = tmp_path / "refer_seg"
    write_instances(root / "refcoco", root / "images" / "mscoco" / "images" / "train2014")
    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(REFS, f, protocol=2)
    return root


def test_safe_pickle_reads_plain_protocol2(refer_root):
    assert load_refs_pickle(refer_root / "refcoco" / "refs(unc).p") == REFS


class Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_runs_nothing(refer_root, tmp_path):
    pwned = tmp_path / "pwned"
    refs_file = refer_root / "refcoco" / "refs(unc).p"
    refs_file.write_bytes(pickle.dumps([{"ref_id": 0}, Evil(pwned)], protocol=2))
    with pytest.raises(DataError) as err:
        load_refs_pickle(refs_file)
    assert str(refs_file) in str(err.value) and f"refused global {os.system.__module__}.system" in str(err.value)
    with pytest.raises(DataError):
        load_refer(refer_root, "refcoco", "unc", "train")
    (problem,) = validate_refer(refer_root, "refcoco", "unc")
    assert "refused global" in problem.reason
    assert not pwned.exists()


@pytest.mark.parametrize("payload, reason", [
    (pickle.dumps(REFS, protocol=2)[:-30], "truncated"),
    (b"not a pickle at all", "not a readable pickle"),
    (pickle.dumps({"refs": []}, protocol=2), "expected a list"),
])
def test_bad_pickles(tmp_path, payload, reason):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=reason) as err:
        load_refs_pickle(path)
    assert str(path) in str(err.value)


def test_eval_mode_one_record_per_sentence(refer_root):
    (rec,) = load_refer(refer_root, "refcoco", "unc", "val")
    assert rec.question_id == "14" and rec.question == "Segment: small box" and rec.extra["phrase"] == "small box"
    assert rec.answer == "It is <seg>." and rec.masks == [ANNS[4]] and rec.phrases == ["small box"]
    assert rec.image_id == 200 and (rec.height, rec.width) == (H, W)
    assert rec.image_path == refer_root / "images/mscoco/images/train2014/COCO_train2014_000000000200.jpg"
    train = load_refer(refer_root, "refcoco", "unc", "train", image_root=refer_root / "elsewhere")
    assert [r.question_id for r in train] == ["10", "11", "12", "13"]
    assert train[0].image_path == refer_root / "elsewhere" / "COCO_train2014_000000000100.jpg"


def test_train_mode_groups_expressions(refer_root):
    recs = load_refer(refer_root, "refcoco", "unc", "train", mode="train", max_targets=2, seed=0)
    text = {10: "left man", 11: "man in red", 12: "right dog", 13: "blue cup"}
    used = sorted(s for r in recs for s in r.extra["sent_ids"])
    assert used == [10, 11, 12, 13]  # every expression exactly once
    for r in recs:
        assert 1 <= len(r.masks) <= 2 and len(set(r.extra["ann_ids"])) == len(r.masks)
        assert r.phrases == [text[s] for s in r.extra["sent_ids"]]
        assert r.masks == [ANNS[a] for a in r.extra["ann_ids"]]
        assert r.question == "Segment: " + "; ".join(r.phrases)
        expected = r.phrases[0] + " <seg>." if len(r.phrases) == 1 else f"{r.phrases[0]} <seg> and {r.phrases[1]} <seg>."
        assert r.answer == expected
        assert r.image_id == 100
    assert [r.question_id for r in recs] == [f"100:{i}" for i in range(len(recs))]
    again = load_refer(refer_root, "refcoco", "unc", "train", mode="train", max_targets=2, seed=0)
    assert [(r.question, r.answer) for r in again] == [(r.question, r.answer) for r in recs]
    three = load_refer(refer_root, "refcoco", "unc", "train", mode="train", max_targets=3, seed=5)
    assert max(len(r.masks) for r in three) == 3 and sum(len(r.masks) for r in three) == 4
    big = next(r for r in three if len(r.masks) == 3)
    assert big.answer == f"{big.phrases[0]} <seg>, {big.phrases[1]} <seg> and {big.phrases[2]} <seg>."


def test_validate_refer(refer_root):
    assert validate_refer(refer_root, "refcoco", "unc") == []
    refs = [dict(r) for r in REFS]
    refs[1]["ann_id"] = 99
    refs[2]["sentences"] = [sent(10, "dup id")]
    with open(refer_root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    (refer_root / "images/mscoco/images/train2014/COCO_train2014_000000000200.jpg").unlink()
    reasons = sorted(f"{p.where}: {p.reason}" for p in validate_refer(refer_root, "refcoco", "unc"))
    assert any("ref 1 (ref_id 1): ann_id 99 is not in instances.json" in r for r in reasons)
    assert any(r.startswith("sent_id 10: used by 2") for r in reasons)
    assert any(r.startswith("image id 200: image not found") for r in reasons)
    assert len(reasons) == 3


@pytest.fixture
def gref_root(tmp_path):
    root = tmp_path / "refer_seg"
    write_instances(root / "grefcoco", root / "images" / "mscoco" / "images" / "train2014")
    grefs = [
        {"ref_id": 0, "image_id": 100, "ann_id": [-1], "no_target": True, "split": "val",
         "sentences": [{"sent": "the giraffe", "sent_id": 1}]},
        {"ref_id": 1, "image_id": 100, "ann_id": [2], "no_target": False, "split": "val",
         "sentences": [{"sent": "dog", "sent_id": 2}, {"sent": "the dog", "sent_id": 3}]},
        {"ref_id": 2, "image_id": 100, "ann_id": [1, 2], "split": "val", "sentences": [{"sent": "both", "sent_id": 4}]},
        {"ref_id": 3, "image_id": 100, "ann_id": [1, 3], "split": "val", "sentences": [{"sent": "man and cup", "sent_id": 5}]},
        {"ref_id": 4, "image_id": 200, "ann_id": [], "split": "train", "sentences": [{"sent": "nothing", "sent_id": 6}]},
    ]
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(grefs))
    return root


def test_grefcoco_zero_one_multi_targets(gref_root):
    recs = {r.question_id: r for r in load_grefcoco(gref_root)}
    assert sorted(recs) == ["1", "2", "3", "4", "5"]
    zero = recs["1"]
    assert zero.masks == [] and zero.answer == NO_TARGET_ANSWER and zero.extra["no_target"] is True
    one = recs["2"]
    assert one.masks == [ANNS[2]] and one.answer == "It is <seg>." and one.extra["no_target"] is False
    assert recs["3"].masks == one.masks
    both = recs["4"].masks
    assert len(both) == 1 and both[0] == ANNS[1] + ANNS[2]  # all polygons: concatenated
    np.testing.assert_array_equal(decode_mask(both[0], H, W), MASKS[1] | MASKS[2])
    mixed = recs["5"].masks
    assert len(mixed) == 1 and isinstance(mixed[0]["counts"], str)  # polygon + RLE: one compressed RLE
    np.testing.assert_array_equal(decode_mask(mixed[0], H, W), MASKS[1] | MASKS[3])
    (train,) = load_grefcoco(gref_root, split="train")
    assert train.extra["no_target"] and train.masks == [] and train.image_id == 200


def test_union_mask_spec_single_part_is_unchanged():
    assert union_mask_spec([ANNS[3]], H, W) is ANNS[3]


def test_validate_grefcoco(gref_root):
    assert validate_grefcoco(gref_root) == []
    path = gref_root / "grefcoco" / "grefs(unc).json"
    grefs = json.loads(path.read_text())
    grefs[1]["no_target"] = True
    path.write_text(json.dumps(grefs))
    (problem,) = validate_grefcoco(gref_root)
    assert problem.where == "ref 1 (ref_id 1)" and "no_target is true" in problem.reason
    with pytest.raises(DataError, match="no_target is true"):
        load_grefcoco(gref_root)
