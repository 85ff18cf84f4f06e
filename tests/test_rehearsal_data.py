"""Rehearsal data writer: every source of configs/pixellm_7b.yaml loads from what it writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from pixellm.cli import main as cli_main
from pixellm.config import load_config
from pixellm.data.masks import decode_mask
from pixellm.data.safe_pickle import load_refs_pickle
from pixellm.data.sources import load_source, source_name
from pixellm.evaluation.datasets import parse_dataset
from pixellm.rehearsal.data import SIZES, write_rehearsal_data

REPO = Path(__file__).resolve().parents[1]
CONFIG = load_config(REPO / "configs" / "pixellm_7b.yaml")
IMAGES = 2


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    return root, write_rehearsal_data(root, images=IMAGES, seed=0)


def tree_digest(data: Path) -> dict[str, str]:
    return {p.relative_to(data).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file()}


def check_masks(records) -> None:
    """Every target of every record decodes to a non-empty mask at the record's size."""
    for rec in records:
        for spec in rec.masks:
            mask = decode_mask(spec, rec.height, rec.width, root=rec.mask_root)
            assert mask.any(), (rec.source, rec.question_id)


@pytest.mark.parametrize("spec", CONFIG.data.train, ids=source_name)
def test_every_train_source_loads_without_skips(written, monkeypatch, spec):
    root, _ = written
    monkeypatch.chdir(root)  # the config's paths are relative to the working directory
    skipped = []
    records = load_source(spec, CONFIG.data, skipped=skipped)
    assert skipped == []
    assert records
    assert all(Path(r.image_path).is_file() for r in records)
    check_masks(records)


@pytest.mark.parametrize("spec", CONFIG.data.val, ids=source_name)
def test_val_sources_load(written, monkeypatch, spec):
    root, _ = written
    monkeypatch.chdir(root)
    skipped = []
    records = load_source(spec, CONFIG.data, mode="eval", skipped=skipped)
    assert records and skipped == []
    assert all(r.extra["split"] == "val" and Path(r.image_path).is_file() for r in records)


@pytest.mark.parametrize("name", ["refcoco:val", "refcoco+:val", "refcocog:val", "refclef:val",
                                  "grefcoco:val", "muse:val", "reasonseg:val"])
def test_evaluate_dataset_names_load(written, name):
    root, _ = written
    dataset = parse_dataset(name, data_root=str(root / "data"))
    records = load_source(dataset.source, CONFIG.data, mode="eval")
    assert records and all(Path(r.image_path).is_file() for r in records)
    check_masks(records)
    if name.startswith("refc"):
        assert all(r.answer == "It is <seg>." and len(r.masks) == 1 for r in records)
    if name == "grefcoco:val":
        assert {r.extra["no_target"] for r in records} == {True, False}


@pytest.mark.parametrize("args", [
    ["muse", "--annotations", "data/muse/muse_train.json", "--image-root", "data/coco"],
    ["muse", "--annotations", "data/muse/muse_val.json", "--image-root", "data/coco"],
    ["refer", "--root", "data/refer_seg", "--name", "refcoco", "--split-by", "unc"],
    ["refer", "--root", "data/refer_seg", "--name", "refcocog", "--split-by", "umd"],
    ["refer", "--root", "data/refer_seg", "--name", "refclef", "--split-by", "unc"],
    ["grefcoco", "--root", "data/refer_seg", "--name", "grefcoco", "--split-by", "unc"],
    ["custom", "--annotations", "data/custom/train.jsonl", "--image-root", "data/custom"],
    ["reasonseg", "--root", "data/reasonseg", "--split", "train"],
    ["reasonseg", "--root", "data/reasonseg", "--split", "val"],
], ids=["muse-train", "muse-val", "refcoco", "refcocog", "refclef", "grefcoco", "custom", "reasonseg-train",
        "reasonseg-val"])
def test_validate_data_finds_no_problem(written, monkeypatch, capsys, args):
    root, _ = written
    monkeypatch.chdir(root)
    code = cli_main(["validate-data", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[-1].endswith(" 0 problems found, 0 warnings")


def test_custom_jsonl_loads_with_every_mask_form(written):
    root, info = written
    data = root / "data" / "custom"
    spec = parse_dataset(f"custom:{data / 'train.jsonl'}").source
    skipped = []
    records = load_source(spec, CONFIG.data, skipped=skipped)
    assert skipped == [] and len(records) == info["sources"]["custom"]["conversations"]
    check_masks(records)
    forms = {type(m).__name__ for r in records for m in r.masks}
    assert forms == {"str", "dict", "list"}
    assert any(not r.masks and "<seg>" not in r.answer for r in records)  # a no-target question


def test_images_are_coco_sized_jpegs(written):
    root, _ = written
    files = sorted((root / "data").rglob("*.jpg"))
    assert len(files) >= 8 * IMAGES
    for path in files:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size in SIZES, path


def test_many_targets_polygons_and_every_encoding(written):
    root, _ = written
    muse = json.loads((root / "data" / "muse" / "muse_train.json").read_text())
    insts = [inst for rec in muse for answer in rec["answers"] for inst in answer]
    assert max(len(a) for rec in muse for a in rec["answers"]) >= 8
    assert any(len(a) == 0 for rec in muse for a in rec["answers"])
    polygons = [sum(len(i["segmentation"]) for a in rec["answers"] for i in a
                    if isinstance(i["segmentation"], list)) for rec in muse]
    assert max(polygons) >= 10
    kinds = {"polygons" if isinstance(s, list) else type(s["counts"]).__name__
             for s in (i["segmentation"] for i in insts)}
    assert kinds == {"polygons", "list", "str"}  # polygons, uncompressed and compressed RLE
    assert all(len(p) >= 32 for i in insts if isinstance(i["segmentation"], list)
               for p in i["segmentation"])  # tens of vertices, like real outlines
    for rec in muse:  # {seg} marks one per instance where a text answer is given
        for text, answer in zip(rec["text_answers"], rec["answers"]):
            assert text is None or text.count("{seg}") == len(answer)
    coco = json.loads((root / "data" / "refer_seg" / "refcoco" / "instances.json").read_text())
    per_image = [sum(a["image_id"] == im["id"] for a in coco["annotations"])
                 for im in coco["images"]]
    assert max(per_image) >= 20


def test_refer_and_grefcoco_have_train_and_val(written):
    root, info = written
    refer = root / "data" / "refer_seg"
    for name, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd"),
                           ("refclef", "unc")):
        refs = load_refs_pickle(refer / name / f"refs({split_by}).p")
        assert {"train", "val"} <= {r["split"] for r in refs}
        assert info["sources"][name]["refs"]["val"] > 0
    grefs = json.loads((refer / "grefcoco" / "grefs(unc).json").read_text())
    for split in ("train", "val"):
        assert {r["no_target"] for r in grefs if r["split"] == split} == {True, False}
    assert all(r["ann_id"] == [-1] for r in grefs if r["no_target"])


def test_vqa_is_multi_turn_with_the_image_tag_first(written):
    root, _ = written
    records = json.loads((root / "data" / "llava_dataset" / "llava_instruct_150k.json").read_text())
    for rec in records:
        turns = rec["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in turns[1:])
        assert (root / "data" / "coco" / "train2017" / rec["image"]).is_file()
    assert any(len(rec["conversations"]) >= 4 for rec in records)


def test_returned_paths_exist(written):
    root, info = written
    assert info["images"] == IMAGES and info["root"] == str(root)
    for name, entry in info["sources"].items():
        assert entry["images"] == IMAGES, name
        for path in entry["paths"]:
            assert (root / path).exists(), path


def test_same_seed_same_bytes_other_seed_other_data(written, tmp_path):
    root, info = written
    again = write_rehearsal_data(tmp_path / "again", images=IMAGES, seed=0)
    assert again["sources"] == info["sources"]
    assert tree_digest(tmp_path / "again" / "data") == tree_digest(root / "data")
    write_rehearsal_data(tmp_path / "other", images=IMAGES, seed=1)
    other = tree_digest(tmp_path / "other" / "data")
    assert other["muse/muse_train.json"] != tree_digest(root / "data")["muse/muse_train.json"]


def test_needs_two_images(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        write_rehearsal_data(tmp_path, images=1)
