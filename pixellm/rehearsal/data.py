"""Real-size rehearsal data in every on-disk layout that `configs/pixellm_7b.yaml` reads.

`write_rehearsal_data(root)` writes, under `root/data/`, small splits of full-size data so that
the 7B recipe can run with the working directory `root` and its relative paths unchanged::

    data/ade20k/classes.json                              150 ADE20K class names
    data/ade20k/{images,annotations}/training/ADE_train_*.{jpg,png}
    data/cocostuff/classes.txt                            182 COCO-Stuff names, one a line
    data/cocostuff/{images,annotations}/train2017/<12-digit id>.{jpg,png}
    data/refer_seg/{refcoco,refcoco+,refclef}/refs(unc).p + instances.json
    data/refer_seg/refcocog/refs(umd).p + instances.json
    data/refer_seg/grefcoco/grefs(unc).json + instances.json
    data/refer_seg/images/mscoco/images/train2014/COCO_train2014_<id>.jpg
    data/refer_seg/images/saiapr_tc-12/<NN>/images/<id>.jpg
    data/llava_dataset/llava_instruct_150k.json           images in data/coco/train2017/
    data/muse/muse_{train,val}.json                       images in data/coco/<folder>/
                                                          (train2014, train2017, val2017)
    data/reasonseg/{train,val}/<stem>.jpg + <stem>.json  LabelMe shapes: target, ignore, flag
    data/custom/train.jsonl + images/*.jpg + masks/*.png  (a custom-data stage)

Images are JPEGs of 640x480, 480x640 or 640x427 with smooth random shapes; every mask is a
shape painted in its image (polygons of tens of vertices, some images with tens of instances).
Everything derives from `seed` (one independent generator per source), so the same seed writes
byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

from .layouts_coco import (
    coco_train2014_scenes,
    write_ade20k,
    write_cocostuff,
    write_grefcoco,
    write_refclef,
    write_refer_dataset,
)
from .layouts_text import write_custom, write_muse, write_reasonseg, write_vqa
from .scenes import SIZES, source_rng  # noqa: F401  (SIZES: the photo sizes, for the tests)

# ------------------------------------------------------------------ all of it


def write_rehearsal_data(root: Path, *, images: int = 6, seed: int = 0) -> dict:
    """Write every source `configs/pixellm_7b.yaml` reads (train and val) plus a custom JSONL
    under `root/data/` (layout: module docstring). `images`: photos per source (>= 2, so that
    every REFER split has an image). Returns {"root", "seed", "images", "sources": {name:
    {"paths" (relative to root), counts...}}}."""
    if images < 2:
        raise ValueError(f"images must be at least 2 (a train and a val image), got {images}")
    root = Path(root)
    data = root / "data"
    sources = {
        "ade20k": write_ade20k(data, images, source_rng(seed, "ade20k")),
        "cocostuff": write_cocostuff(data, images, source_rng(seed, "cocostuff")),
    }
    scenes, _, instances = coco_train2014_scenes(data, images, source_rng(seed, "coco_train2014"))
    for name, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        sources[name] = write_refer_dataset(data, name, split_by, scenes, instances,
                                            source_rng(seed, name))
    sources["refclef"] = write_refclef(data, images, source_rng(seed, "refclef"))
    sources["grefcoco"] = write_grefcoco(data, scenes, instances, source_rng(seed, "grefcoco"))
    sources["llava_instruct"] = write_vqa(data, images, source_rng(seed, "vqa"))
    sources["muse_train"] = write_muse(data, images, "train", source_rng(seed, "muse_train"))
    sources["muse_val"] = write_muse(data, images, "val", source_rng(seed, "muse_val"))
    sources["reasonseg"] = write_reasonseg(data, images, source_rng(seed, "reasonseg"))
    sources["custom"] = write_custom(data, images, source_rng(seed, "custom"))
    return {"root": str(root), "seed": seed, "images": images, "sources": sources}
