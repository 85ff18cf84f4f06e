"""The leak guard (pixellm/data/leaks.py) on small fixtures whose overlaps are known."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixellm.config import load_config
from pixellm.data.errors import DataError
from pixellm.data.leaks import image_key
from pixellm.data.skips import SkipLog
from pixellm.training.setup import load_training_records


def photo(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def conversation(n: int = 1) -> list:
    return [{"question": f"q{i}", "answer": "it is <seg>.", "masks": [[[1, 1, 8, 1, 8, 8]]]} for i in range(n)]


@pytest.fixture()
def data(tmp_path) -> Path:
    """COCO-named training images 1 and 2 (2 questions on image 2), other training photos x and y;
    muse:val holds COCO image 2 (a val2017 copy, other bytes), reasonseg:val holds y's bytes."""
    d = tmp_path / "data"
    photo(d / "coco" / "train2017" / "000000000001.jpg", 1)
    photo(d / "coco" / "train2017" / "000000000002.jpg", 2)
    photo(d / "coco" / "val2017" / "000000000002.jpg", 3)
    photo(d / "photos" / "x.jpg", 4)
    photo(d / "photos" / "y.jpg", 5)
    lines = [{"image": "coco/train2017/000000000001.jpg", "conversations": conversation()},
             {"image": "coco/train2017/000000000002.jpg", "conversations": conversation(2)}]
    (d / "coco_train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    lines = [{"image": f"photos/{s}.jpg", "conversations": conversation()} for s in "xy"]
    (d / "photos.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    inst = {"segmentation": [[1, 1, 8, 1, 8, 8]], "bbox": [1, 1, 7, 7], "category_name": "cup"}
    muse = [{"file_name": "val2017/000000000002.jpg", "height": 16, "width": 16, "image_id": 2,
             "questions": ["which cup?"], "answers": [[inst]], "text_answers": ["this {seg}."]}]
    (d / "muse").mkdir()
    (d / "muse" / "muse_val.json").write_text(json.dumps(muse))
    val = d / "reasonseg" / "val"
    val.mkdir(parents=True)
    shutil.copy(d / "photos" / "y.jpg", val / "r1.jpg")
    photo(val / "r2.jpg", 6)
    for stem in ("r1", "r2"):
        shape = {"label": "target", "points": [[1, 1], [8, 1], [8, 8]]}
        (val / f"{stem}.json").write_text(json.dumps({"text": ["the thing"], "is_sentence": False, "shapes": [shape]}))
    return d


def config(d: Path, exclude: bool, train: list[str] = ("coco_train", "photos")):
    sources = [f"{{type: custom, name: {n}, annotations: {d / (n + '.jsonl')}, image_root: {d}}}" for n in train]
    return load_config(None, [f"data.train=[{', '.join(sources)}]", f"data.leak_check_root={d}",
                              "data.leak_check=[muse:val, reasonseg:val, refcoco:val]",
                              f"data.exclude_eval_images={str(exclude).lower()}"])


def test_image_keys_use_the_coco_id_else_the_file_content(data):
    assert image_key(data / "coco" / "train2017" / "000000000002.jpg") == "coco:2"
    assert image_key("x/COCO_train2014_000000123456.jpg") == "coco:123456"
    assert image_key(data / "photos" / "y.jpg") == image_key(data / "reasonseg" / "val" / "r1.jpg")
    assert image_key(data / "photos" / "x.jpg").startswith("sha1:") and image_key(data / "photos" / "x.jpg") != image_key(data / "photos" / "y.jpg")


def test_overlaps_are_counted_per_pair_and_logged_and_nothing_is_dropped_by_default(data, caplog):
    with caplog.at_level(logging.WARNING):
        sources = dict(load_training_records(config(data, exclude=False), SkipLog(None)))
    assert {k: len(v) for k, v in sources.items()} == {"coco_train:train": 3, "photos:train": 2}
    text = caplog.text
    assert "coco_train:train shares 1 images with muse:val" in text
    assert "photos:train shares 1 images with reasonseg:val" in text
    assert "coco_train:train shares 1 images with reasonseg:val" not in text and "shares 0" not in text
    assert "not on disk (not checked): refcoco:val" in text


def test_exclusion_drops_every_record_of_an_evaluation_image_and_says_how_many(data, caplog):
    with caplog.at_level(logging.WARNING):
        sources = dict(load_training_records(config(data, exclude=True), SkipLog(None)))
    assert [r.image_path.name for r in sources["coco_train:train"]] == ["000000000001.jpg"]
    assert [r.image_path.name for r in sources["photos:train"]] == ["x.jpg"]
    assert "dropped 2 training records of coco_train:train" in caplog.text
    assert "dropped 1 training records of photos:train" in caplog.text


def test_a_source_left_empty_is_an_error_that_names_it(data):
    (data / "only2.jsonl").write_text(json.dumps({"image": "coco/train2017/000000000002.jpg",
                                                  "conversations": conversation()}) + "\n")
    with pytest.raises(DataError, match="only2:train: -: every training record's image is in a data.leak_check split"):
        load_training_records(config(data, exclude=True, train=["only2"]), SkipLog(None))
