"""The synthetic shapes task: CLI, custom-format validity, held-out pairs, determinism, answers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from pixellm.constants import NO_TARGET_ANSWER
from pixellm.data.custom import load_custom, validate_custom
from pixellm.data.masks import decode_mask
from pixellm.data.synthetic import generate_synthetic, register
from pixellm.data.synthetic_scene import COLOURS, HELD_OUT_PAIRS, SEEN_PAIRS, SHAPES

NAME = re.compile(rf"({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    paths = generate_synthetic(out, 60, 10, 20, seed=3, progress=False)
    return out, paths


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _image(out, record):
    return np.asarray(Image.open(out / record["image"]).convert("RGB"))


def test_vocabulary():
    assert len(SHAPES) >= 4 and len(COLOURS) >= 6
    shapes = {s for _, s in HELD_OUT_PAIRS}
    assert shapes == set(SHAPES) and len(HELD_OUT_PAIRS) == len(SHAPES)  # one held-out colour per shape
    assert not HELD_OUT_PAIRS & set(SEEN_PAIRS)


def test_cli_output_validates(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["make-synthetic", str(tmp_path), "--train", "12", "--val", "3",
                              "--compositional", "4", "--size", "48", "--seed", "1"])
    assert args.func(args) == 0
    for split, n in (("train", 12), ("val", 3), ("compositional", 4)):
        path = tmp_path / f"{split}.jsonl"
        assert validate_custom(path, tmp_path) == []
        assert len(path.read_text().splitlines()) == n
        records = load_custom(path, tmp_path)
        assert {(r.height, r.width) for r in records} == {(48, 48)}
        assert (tmp_path / "images" / split).is_dir() and (tmp_path / "masks" / split).is_dir()


def test_splits_validate_and_load(synth):
    out, paths = synth
    assert set(paths) == {"train", "val", "compositional"}
    for path in paths.values():
        assert validate_custom(path, out) == []
        for r in load_custom(path, out):
            assert r.answer.count("<seg>") == len(r.masks) == len(r.phrases)
            assert r.image_path.is_file() and r.mask_root == out


def test_compositional_uses_only_held_out_pairs(synth):
    out, paths = synth

    def pairs(path):
        found = set()
        for rec in _records(path):
            assert 2 <= len(rec["objects"]) <= 5
            found |= {(o["colour"], o["shape"]) for o in rec["objects"]}
            for conv in rec["conversations"]:
                found |= set(NAME.findall(conv["question"])) | set(NAME.findall(conv["answer"]))
        return found

    assert pairs(paths["compositional"]) <= HELD_OUT_PAIRS
    assert len(pairs(paths["compositional"])) >= 3
    assert not pairs(paths["train"]) & HELD_OUT_PAIRS
    assert not pairs(paths["val"]) & HELD_OUT_PAIRS


def test_target_masks_have_the_named_colour(synth):
    """Every answer mask covers pixels of exactly the named colour, in the named order."""
    out, paths = synth
    for path in paths.values():
        for rec in _records(path):
            image = _image(out, rec)
            for conv in rec["conversations"]:
                names = NAME.findall(conv["answer"])
                assert len(names) == len(conv["masks"])
                for (colour, shape), mask_path in zip(names, conv["masks"], strict=True):
                    mask = decode_mask(mask_path, *image.shape[:2], root=out)
                    assert mask.sum() > 10
                    assert (image[mask] == COLOURS[colour]).all()
                    obj = next(o for o in rec["objects"] if o["mask"] == mask_path)
                    assert (obj["colour"], obj["shape"]) == (colour, shape)
                if conv["kind"] == "targets":
                    assert NAME.findall(conv["question"]) == names and 1 <= len(names) <= 4


def test_relation_questions(synth):
    out, paths = synth
    count = 0
    for rec in _records(paths["train"]):
        image = _image(out, rec)
        objects = {f"{o['colour']} {o['shape']}": o for o in rec["objects"]}
        for conv in rec["conversations"]:
            if conv["kind"] != "relation":
                continue
            count += 1
            m = re.search(r"shape (left of|right of|above|below) the (\w+ \w+)", conv["question"])
            rel, anchor = m.group(1), objects[m.group(2)]
            assert len(conv["masks"]) == 1
            target = objects[conv["phrases"][0]]
            mask = decode_mask(conv["masks"][0], *image.shape[:2], root=out)
            assert (image[mask] == COLOURS[target["colour"]]).all()
            assert conv["masks"][0] == target["mask"]
            fits = [name for name, o in objects.items() if o is not anchor and _beyond(o["bbox"], anchor["bbox"], rel)]
            assert fits == [conv["phrases"][0]]
            ys, xs = np.nonzero(mask)
            ax0, ay0, ax1, ay1 = anchor["bbox"]
            side = {"left of": xs.max() < ax0, "right of": xs.min() > ax1, "above": ys.max() < ay0, "below": ys.min() > ay1}
            assert side[rel]
    assert count >= 10


def test_absent_questions(synth):
    out, paths = synth
    convs = [(rec, c) for rec in _records(paths["train"]) for c in rec["conversations"]]
    absent = [(rec, c) for rec, c in convs if c["kind"] == "absent"]
    assert 0.08 <= len(absent) / len(convs) <= 0.3
    for rec, conv in absent:
        assert conv["answer"] == NO_TARGET_ANSWER and conv["masks"] == []
        (named,) = NAME.findall(conv["question"])
        assert named not in {(o["colour"], o["shape"]) for o in rec["objects"]}


def test_deterministic(tmp_path):
    a = generate_synthetic(tmp_path / "a", 8, 2, 2, seed=5, progress=False)
    b = generate_synthetic(tmp_path / "b", 8, 2, 2, seed=5, progress=False)
    c = generate_synthetic(tmp_path / "c", 8, 2, 2, seed=6, progress=False)
    for split in a:
        assert a[split].read_text() == b[split].read_text()
    assert a["train"].read_text() != c["train"].read_text()
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and files_a
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in files_a)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least 32"):
        generate_synthetic(tmp_path, 1, 1, 1, size=16)
    with pytest.raises(ValueError, match=">= 0"):
        generate_synthetic(tmp_path, -1, 1, 1)


def _beyond(box, anchor, rel):
    return {"left of": box[2] < anchor[0], "right of": box[0] > anchor[2],
            "above": box[3] < anchor[1], "below": box[1] > anchor[3]}[rel]


def test_vqa_split_is_text_only_and_names_every_pair(tmp_path):
    from pixellm.data.custom import load_custom
    from pixellm.data.synthetic_scene import HELD_OUT_PAIRS, SceneObject
    from pixellm.data.synthetic_vqa import position_words, vqa_question

    paths = generate_synthetic(tmp_path, 4, 2, 2, seed=1, progress=False, num_vqa=120)
    before = generate_synthetic(tmp_path / "plain", 4, 2, 2, seed=1, progress=False)
    assert set(paths) == {"train", "val", "compositional", "vqa"} and "vqa" not in before
    # adding the VQA split leaves the other splits as they were
    assert paths["val"].read_text() == before["val"].read_text()
    records = load_custom(paths["vqa"], tmp_path)
    assert len(records) >= 300 and all(not r.masks and "<seg>" not in r.answer for r in records)
    kinds = {json.loads(line)["conversations"][0]["kind"] for line in paths["vqa"].read_text().splitlines()}
    assert kinds == {"colour", "shape", "count", "position", "exists"}
    named = {p for p in HELD_OUT_PAIRS if any(f"{p[0]} {p[1]}" in r.answer for r in records)}
    assert named == set(HELD_OUT_PAIRS)  # the names the mask data holds out are heard here
    # answers by hand on a known scene (64 px: thirds at 21.3 and 42.7)
    box = (40, 2, 50, 12)  # centre (45, 7): top right
    obj = SceneObject("purple", "circle", box, np.zeros((64, 64), bool))
    other = SceneObject("red", "square", (2, 50, 10, 58), np.zeros((64, 64), bool))  # centre (6, 54): bottom left
    assert position_words(obj, 64) == "top right" and position_words(other, 64) == "bottom left"
    rng = np.random.default_rng(0)
    assert vqa_question("colour", rng, [obj, other], [], 64)["answer"] in (
        "It is purple: the purple circle.", "It is red: the red square.")
    assert vqa_question("count", rng, [obj, other], [], 64) == {
        "question": "How many shapes are there?", "answer": "There are 2 shapes: the purple circle and the red square."}
    assert vqa_question("colour", rng, [obj, SceneObject("red", "circle", box, obj.mask)], [], 64) is None
