"""LLaVA-style VQA loader and the ADE20K / COCO-Stuff class-referring loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pixellm.data.errors import DataError
from pixellm.data.masks import decode_mask
from pixellm.data.semseg import load_semseg
from pixellm.data.vqa import load_vqa, strip_image_tag

# ---------------------------------------------------------------- VQA


def _vqa_file(tmp_path, records):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    return path


def _turn(who, text):
    return {"from": who, "value": text}


def test_load_vqa_pairs(tmp_path):
    path = _vqa_file(tmp_path, [
        {"id": "000033471", "image": "coco/1.jpg", "conversations": [
            _turn("human", "<image>\nWhat is on the table?"), _turn("gpt", "A laptop."),
            _turn("human", "What colour is it?"), _turn("gpt", "Silver."),
            _turn("human", "Is it on?\n<image>"), _turn("gpt", "No."),
        ]},
        {"image": "coco/2.jpg", "conversations": [_turn("human", "Describe it.\n\n<image>"), _turn("gpt", "A dog.")]},
    ])
    records = load_vqa(path, tmp_path / "images")
    assert [r.question_id for r in records] == ["0:0", "0:1", "0:2", "1:0"]
    assert [r.question for r in records] == ["What is on the table?", "What colour is it?", "Is it on?", "Describe it."]
    assert [r.answer for r in records] == ["A laptop.", "Silver.", "No.", "A dog."]
    assert [r.image_id for r in records] == ["000033471"] * 3 + [1]
    assert records[0].image_path == tmp_path / "images" / "coco" / "1.jpg"
    assert all(r.source == "vqa" and r.masks == [] and r.num_targets == 0 for r in records)
    assert [r.question_id for r in load_vqa(path, tmp_path, max_turns=1)] == ["0:0", "1:0"]


def test_strip_image_tag():
    assert strip_image_tag("<image>\nHi?") == "Hi?"
    assert strip_image_tag("Hi?\n<image>") == "Hi?"
    assert strip_image_tag("Hi?") == "Hi?"


@pytest.mark.parametrize("record, reason", [
    ({"image": "a.jpg", "conversations": [_turn("human", "q")]}, "human/gpt pairs"),
    ({"image": "a.jpg", "conversations": [_turn("gpt", "q"), _turn("human", "a")]}, "turn 0 is from 'gpt'"),
    ({"conversations": [_turn("human", "q"), _turn("gpt", "a")]}, "'image'"),
    ({"image": "a.jpg", "conversations": []}, "non-empty list"),
    ({"image": "a.jpg", "conversations": [_turn("human", "<image>\n"), _turn("gpt", "a")]}, "question is empty"),
    ({"image": "a.jpg", "conversations": [_turn("human", "q"), {"from": "gpt"}]}, "string 'value'"),
    ({"image": "a.jpg", "conversations": [_turn("human", "q"), _turn("gpt", "x <seg>")]}, "no masks"),
    ("just a string", "JSON object"),
])
def test_load_vqa_rejects(tmp_path, record, reason):
    ok = {"image": "ok.jpg", "conversations": [_turn("human", "q"), _turn("gpt", "a")]}
    path = _vqa_file(tmp_path, [ok, record])
    with pytest.raises(DataError, match="llava.json: record 1: .*" + reason):
        load_vqa(path, tmp_path)


def test_load_vqa_not_a_list(tmp_path):
    path = tmp_path / "llava.json"
    path.write_text('{"a": 1}')
    with pytest.raises(DataError, match="JSON list"):
        load_vqa(path, tmp_path)
    path.write_text('[{"a": 1},')
    with pytest.raises(DataError, match="invalid JSON"):
        load_vqa(path, tmp_path)


# ---------------------------------------------------------------- semantic segmentation


def _semseg_image(root, folder, stem, labels):
    (root / "images" / folder).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
    h, w = labels.shape
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "images" / folder / f"{stem}.jpg")
    Image.fromarray(labels.astype(np.uint8)).save(root / "annotations" / folder / f"{stem}.png")


def _ade_labels():
    labels = np.zeros((8, 10), np.uint8)  # 0 = other
    labels[0:2, :] = 1   # wall
    labels[2:4, :] = 3   # sky
    labels[4:6, 0:5] = 4  # floor
    labels[6:8, 0:3] = 5  # tree
    return labels


@pytest.fixture
def ade_root(tmp_path):
    root = tmp_path / "ade"
    _semseg_image(root, "training", "ADE_train_1", _ade_labels())
    _semseg_image(root, "training", "ADE_train_2", np.zeros((4, 4), np.uint8))  # only "other"
    _semseg_image(root, "validation", "ADE_val_1", np.full((4, 6), 2, np.uint8))
    (root / "classes.json").write_text(json.dumps(["wall", "building", "sky", "floor", "tree"]))
    return root


def test_ade20k_questions_and_masks(ade_root):
    records = load_semseg(ade_root, "ade20k", "train", max_classes_per_question=3, seed=0)
    assert len(records) == 2  # 4 classes -> groups of 3 and 1; the "other"-only image has none
    assert [len(r.masks) for r in records] == [3, 1]
    labels = _ade_labels()
    index = {"wall": 1, "building": 2, "sky": 3, "floor": 4, "tree": 5}
    seen = []
    for r in records:
        assert r.source == "ade20k" and r.image_id == "ADE_train_1" and (r.height, r.width) == (8, 10)
        assert r.question == "Segment the " + _join(r.phrases) + "."
        assert r.answer == _join([f"{p} <seg>" for p in r.phrases]) + "."
        for phrase, spec in zip(r.phrases, r.masks, strict=True):
            assert np.array_equal(decode_mask(spec, r.height, r.width), labels == index[phrase])
            seen.append(phrase)
    assert sorted(seen) == ["floor", "sky", "tree", "wall"]
    assert [r.question_id for r in records] == ["ADE_train_1:0", "ADE_train_1:1"]


def test_semseg_deterministic_grouping(ade_root):
    def groups(seed):
        return [r.phrases for r in load_semseg(ade_root, "ade20k", "training", 2, seed=seed)]

    assert groups(0) == groups(0)
    assert any(groups(s) != groups(0) for s in range(1, 6))
    assert all(len(g) <= 2 for g in groups(0))


def test_ade20k_val_and_class_names_argument(ade_root):
    (ade_root / "classes.json").unlink()
    with pytest.raises(DataError, match="classes.json.*not found"):
        load_semseg(ade_root, "ade20k", "val")
    records = load_semseg(ade_root, "ade20k", "val", class_names=["a", "b"])
    assert [r.phrases for r in records] == [["b"]] and records[0].answer == "b <seg>."


def test_ade20k_label_outside_class_list(ade_root):
    with pytest.raises(DataError, match="ADE_train_1.png.*label 5 is outside the 4 class names"):
        load_semseg(ade_root, "ade20k", "train", class_names=["a", "b", "c", "d"])


def test_cocostuff(tmp_path):
    root = tmp_path / "stuff"
    labels = np.full((6, 6), 255, np.uint8)  # 255 = ignore
    labels[0:2, :] = 0   # person
    labels[2:4, :] = 2   # wall-brick: skipped (contains "-")
    labels[4:6, :3] = 3  # grass
    _semseg_image(root, "val2017", "000000000139", labels)
    (root / "classes.txt").write_text("person\nbicycle\nwall-brick\ngrass\n")
    records = load_semseg(root, "cocostuff", "val", max_classes_per_question=5)
    assert len(records) == 1
    r = records[0]
    assert r.source == "cocostuff" and sorted(r.phrases) == ["grass", "person"]
    for phrase, spec in zip(r.phrases, r.masks, strict=True):
        assert np.array_equal(decode_mask(spec, 6, 6), labels == {"person": 0, "grass": 3}[phrase])


def test_semseg_errors(tmp_path, ade_root):
    with pytest.raises(DataError, match="not found"):
        load_semseg(tmp_path / "nowhere", "ade20k", "train", class_names=["a"])
    with pytest.raises(ValueError, match="unknown semseg layout"):
        load_semseg(ade_root, "pascal", "train")
    (ade_root / "annotations" / "training" / "ADE_train_2.png").unlink()
    with pytest.raises(DataError, match="ADE_train_2.png: file: not found"):
        load_semseg(ade_root, "ade20k", "train")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(ade_root / "annotations" / "training" / "ADE_train_2.png")
    with pytest.raises(DataError, match="label map is 3x3, the image is 4x4"):
        load_semseg(ade_root, "ade20k", "train")


def _join(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
