"""Rehearsal layouts on COCO-style scenes: ADE20K and COCO-Stuff semantic segmentation, the
REFER family (refs pickle + instances.json) and gRefCOCO."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from ..data.masks import encode_rle
from .scenes import (
    ADE20K_CLASSES,
    ADE_GROUND,
    ADE_OBJECTS,
    ADE_TOP,
    CLEF_CATEGORIES,
    COCO_CATEGORIES,
    COCOSTUFF_CLASSES,
    SPLITS,
    STUFF_GROUND,
    STUFF_OBJECTS,
    STUFF_TOP,
    Obj,
    Scene,
    blob_polygon,
    coco_scene,
    finish_pixels,
    join_words,
    object_mask,
    object_polygons,
    pick_size,
    position,
    rel,
    uncompressed_rle,
    unique_ids,
    write_jpeg,
    write_json,
)

# ------------------------------------------------------------------ semantic segmentation


def semseg_scene(rng: np.random.Generator, top: list[int], ground: list[int], things: list[int],
                 ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, label map): a wavy top band and a ground band of stuff labels, 2-12 objects in
    front, and an unlabeled blob (`ignore`), as annotators leave some pixels unlabeled."""
    width, height = pick_size(rng)
    labels = Image.new("L", (width, height), int(rng.choice(top)))
    draw = ImageDraw.Draw(labels)
    xs = np.linspace(0, width, 48)
    level, waves = rng.uniform(0.35, 0.65), rng.uniform(3, 9)
    horizon = height * (level + 0.05 * np.sin(xs / width * waves))
    band = list(zip(xs.tolist(), horizon.tolist())) + [(width, height), (0, height)]
    draw.polygon(band, fill=int(rng.choice(ground)))
    for _ in range(int(rng.integers(2, 13))):
        for poly in object_polygons(rng, width, height, crowded=False):
            draw.polygon(list(zip(poly[::2], poly[1::2])), fill=int(rng.choice(things)))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    poly = blob_polygon(rng, cx, cy, 0.05 * width, width, height)
    draw.polygon(list(zip(poly[::2], poly[1::2])), fill=ignore)
    label_map = np.asarray(labels)
    palette = rng.integers(20, 236, (256, 3)).astype(np.float32)
    return finish_pixels(rng, palette[label_map]), label_map


def write_ade20k(data: Path, n: int, rng: np.random.Generator) -> dict:
    """ADE20K: `ade20k/classes.json` (150 names), `ade20k/images/training/ADE_train_<8 digits>.jpg`
    and `ade20k/annotations/training/<same stem>.png` (mode L, 0 = other, k = class k - 1)."""
    root = data / "ade20k"
    write_json(root / "classes.json", list(ADE20K_CLASSES))
    index = {name: k + 1 for k, name in enumerate(ADE20K_CLASSES)}
    (label_dir := root / "annotations" / "training").mkdir(parents=True, exist_ok=True)
    for i in unique_ids(rng, n, 0):
        pixels, labels = semseg_scene(rng, *[[index[c] for c in names] for names in
                                             (ADE_TOP, ADE_GROUND, ADE_OBJECTS)], ignore=0)
        stem = f"ADE_train_{i:08d}"
        write_jpeg(root / "images" / "training" / f"{stem}.jpg", pixels)
        Image.fromarray(labels).save(label_dir / f"{stem}.png")
    return {"paths": [rel(root, data.parent)], "images": n}


def write_cocostuff(data: Path, n: int, rng: np.random.Generator) -> dict:
    """COCO-Stuff 164k: `cocostuff/classes.txt` (182 names, one a line),
    `cocostuff/images/train2017/<12-digit id>.jpg` and `cocostuff/annotations/train2017/<id>.png`
    (mode L, label k = class k, 255 = unlabeled). Hyphenated stuff classes (which the loader
    skips, as the reference does) are painted too, so that skip is exercised."""
    root = data / "cocostuff"
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(COCOSTUFF_CLASSES) + "\n", encoding="utf-8")
    index = {name: k for k, name in enumerate(COCOSTUFF_CLASSES)}
    (label_dir := root / "annotations" / "train2017").mkdir(parents=True, exist_ok=True)
    for i in unique_ids(rng, n, 4):
        pixels, labels = semseg_scene(rng, *[[index[c] for c in names] for names in
                                             (STUFF_TOP, STUFF_GROUND, STUFF_OBJECTS)], ignore=255)
        write_jpeg(root / "images" / "train2017" / f"{i:012d}.jpg", pixels)
        Image.fromarray(labels).save(label_dir / f"{i:012d}.png")
    return {"paths": [rel(root, data.parent)], "images": n}


# ------------------------------------------------------------------ REFER and gRefCOCO


def split_of(i: int, n: int, names: tuple[str, str, str]) -> str:
    """REFER splits are per image: the last image is val, the one before test (from 4 images
    on), the rest train; so every split is non-empty from 2 images on."""
    if i == n - 1:
        return names[1]
    return names[2] if n >= 4 and i == n - 2 else names[0]


def coco_instances(scenes: list[Scene], ids: list[int], file_names: list[str], categories: tuple,
                   crowd: bool = True) -> dict:
    """COCO instances.json: one polygon annotation per object; with `crowd`, crowded images get
    one extra iscrowd=1 annotation (uncompressed RLE, COCO's crowd form) that no ref uses.
    Annotation ids are COCO-sized and unique across images."""
    images, anns = [], []
    for scene, image_id, file_name in zip(scenes, ids, file_names):
        images.append({"license": 1, "file_name": file_name, "height": scene.height,
                       "width": scene.width, "id": image_id})
        for k, obj in enumerate(scene.objects):
            anns.append({"segmentation": obj.polygons, "area": obj.area, "iscrowd": 0,
                         "image_id": image_id, "bbox": obj.bbox, "category_id": obj.category_id,
                         "id": image_id * 100 + k})
        if crowd and len(scene.objects) >= 20:
            mask = np.zeros((scene.height, scene.width), dtype=bool)
            for obj in scene.objects[:5]:
                mask |= object_mask(obj, scene.height, scene.width)
            ys, xs = np.nonzero(mask)
            bbox = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
            anns.append({"segmentation": uncompressed_rle(mask), "area": float(mask.sum()),
                         "iscrowd": 1, "image_id": image_id, "bbox": bbox,
                         "category_id": scene.objects[0].category_id, "id": image_id * 100 + 99})
    return {"info": {"description": "pixellm rehearsal"}, "images": images, "annotations": anns,
            "categories": [{"supercategory": "object", "id": i, "name": n} for i, n in categories]}


SENTENCE_STYLES = {
    # dataset -> templates; refcoco+ bans location words, refcocog is long and descriptive.
    "refcoco": ("{pos} {name}", "{color} {name}", "{name} on {pos}", "{size} {name} {pos}"),
    "refcoco+": ("{color} {name}", "{size} {color} {name}", "{name} that is {color}"),
    "refcocog": ("a {color} {name} on the {pos} side of the picture",
                 "the {size} {name} which is {color} and close to the {other}",
                 "a {name} painted {color} next to a {other}"),
    "refclef": ("{pos} {name}", "{color} {name} {pos}", "{name}"),
}


def expression(style: str, obj: Obj, scene: Scene, rng: np.random.Generator) -> str:
    """A referring expression for `obj` in the dataset's style (lower case, no final dot)."""
    template = SENTENCE_STYLES[style][int(rng.integers(len(SENTENCE_STYLES[style])))]
    other = scene.objects[int(rng.integers(len(scene.objects)))].name
    size = "big" if obj.area > np.median([o.area for o in scene.objects]) else "small"
    return template.format(pos=position(obj, scene.width, scene.height), name=obj.name,
                           color=obj.color, size=size, other=other)


def sentence(sent_id: int, text: str) -> dict:
    """A REFER sentence entry (tokens/raw/sent like the released files)."""
    return {"tokens": text.split(), "raw": text[:1].upper() + text[1:], "sent_id": sent_id,
            "sent": text}


def refer_refs(style: str, scenes: list[Scene], instances: dict, splits: tuple,
               rng: np.random.Generator) -> list[dict]:
    """REFER refs: per image 2-5 referred (non-crowd) objects, 1-3 sentences each; ref_id and
    sent_id count from 0 across the file; `split` is the image's."""
    refs, sent_id = [], 0
    n = len(scenes)
    for i, (scene, image) in enumerate(zip(scenes, instances["images"])):
        count = len(scene.objects)
        picks = rng.choice(count, min(count, int(rng.integers(2, 6))), replace=False)
        for k in sorted(int(p) for p in picks):
            obj, ann_id = scene.objects[k], image["id"] * 100 + k
            sents = [sentence(sent_id + j, expression(style, obj, scene, rng))
                     for j in range(int(rng.integers(1, 4)))]
            sent_id += len(sents)
            refs.append({"sent_ids": [s["sent_id"] for s in sents],
                         "file_name": f"{Path(image['file_name']).stem}_{ann_id}.jpg",
                         "ann_id": ann_id, "ref_id": len(refs), "image_id": image["id"],
                         "split": split_of(i, n, splits), "sentences": sents,
                         "category_id": obj.category_id})
    return refs


def write_refer_dataset(data: Path, name: str, split_by: str, scenes: list[Scene],
                        instances: dict, rng: np.random.Generator) -> dict:
    """`refer_seg/<name>/instances.json` + `refs(<split_by>).p`: a pickle (protocol 2, as the
    released Python 2 files) of plain dicts/lists/str/int only, which is all the project's
    restricted unpickler accepts."""
    folder = data / "refer_seg" / name
    write_json(folder / "instances.json", instances)
    refs = refer_refs(name, scenes, instances, SPLITS[split_by], rng)
    with open(folder / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    per_split: dict[str, int] = {}
    for ref in refs:
        per_split[ref["split"]] = per_split.get(ref["split"], 0) + 1
    return {"paths": [rel(folder / "instances.json", data.parent),
                      rel(folder / f"refs({split_by}).p", data.parent)],
            "images": len(scenes), "refs": per_split,
            "sentences": sum(len(r["sentences"]) for r in refs),
            "annotations": len(instances["annotations"])}


def coco_train2014_scenes(data: Path, n: int, rng: np.random.Generator) -> tuple[list, list, dict]:
    """The COCO train2014 photos that RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO share, written to
    `refer_seg/images/mscoco/images/train2014/COCO_train2014_<12-digit id>.jpg`; the first image
    is crowded (tens of instances). Returns (scenes, ids, instances)."""
    folder = data / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    ids = unique_ids(rng, n, 0)
    scenes = [coco_scene(rng, COCO_CATEGORIES, crowded=i == 0) for i in range(n)]
    names = [f"COCO_train2014_{i:012d}.jpg" for i in ids]
    for scene, name in zip(scenes, names):
        write_jpeg(folder / name, scene.pixels)
    return scenes, ids, coco_instances(scenes, ids, names, COCO_CATEGORIES)


def write_refclef(data: Path, n: int, rng: np.random.Generator) -> dict:
    """RefCLEF: SAIAPR TC-12 photos at `refer_seg/images/saiapr_tc-12/<NN>/images/<id>.jpg`
    (file_name "<NN>/images/<id>.jpg" in instances.json), refs(unc).p. Some of its objects are
    stored as compressed RLE instead of polygons, so refs reach both decoders."""
    refer_root = data / "refer_seg"
    ids = sorted(int(v) for v in rng.choice(np.arange(1000, 41000), n, replace=False))
    scenes = [coco_scene(rng, CLEF_CATEGORIES, crowded=i == 0) for i in range(n)]
    names = [f"{i // 1000:02d}/images/{i}.jpg" for i in ids]
    for scene, name in zip(scenes, names):
        write_jpeg(refer_root / "images" / "saiapr_tc-12" / name, scene.pixels)
    instances = coco_instances(scenes, ids, names, CLEF_CATEGORIES, crowd=False)
    for ann in instances["annotations"][1::3]:
        image = next(im for im in instances["images"] if im["id"] == ann["image_id"])
        rles = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
        ann["segmentation"] = encode_rle(mask_utils.decode(mask_utils.merge(rles)).astype(bool))
    return write_refer_dataset(data, "refclef", "unc", scenes, instances, rng)


def grefs(scenes: list[Scene], instances: dict, rng: np.random.Generator) -> list[dict]:
    """gRefCOCO refs per image: single-target refs, a multi-target ref (2-4 objects, one
    expression for all) and a no-target ref (`ann_id` [-1], `no_target` true) naming a category
    that is not in the image."""
    refs, sent_id = [], 0
    splits = ("train", "val", "testA")
    for i, (scene, image) in enumerate(zip(scenes, instances["images"])):
        k = len(scene.objects)
        groups = [[int(j)] for j in rng.choice(k, min(k, 2), replace=False)]
        multi = rng.choice(k, min(k, int(rng.integers(2, 5))), replace=False)
        groups.append(sorted(int(j) for j in multi))
        groups.append([])
        for group in groups:
            if group:
                objs = [scene.objects[j] for j in group]
                names = join_words([f"{o.color} {o.name}" for o in objs])
                text = names if len(objs) > 1 else expression("refcoco", objs[0], scene, rng)
            else:
                present = {o.name for o in scene.objects}
                start = int(rng.integers(len(COCO_CATEGORIES)))
                absent = next(n for _, n in COCO_CATEGORIES[start:] + COCO_CATEGORIES
                              if n not in present)
                text = f"the {absent} on the {['left', 'right'][int(rng.integers(2))]}"
            refs.append({"ref_id": len(refs), "image_id": image["id"],
                         "split": split_of(i, len(scenes), splits),
                         "ann_id": [image["id"] * 100 + j for j in group] or [-1],
                         "category_id": [scene.objects[j].category_id for j in group] or [-1],
                         "no_target": not group, "file_name": image["file_name"],
                         "sentences": [sentence(sent_id, text)], "sent_ids": [sent_id]})
            sent_id += 1
    return refs


def write_grefcoco(data: Path, scenes: list[Scene], instances: dict,
                   rng: np.random.Generator) -> dict:
    """gRefCOCO: `refer_seg/grefcoco/grefs(unc).json` + `instances.json` over the shared COCO
    train2014 photos."""
    folder = data / "refer_seg" / "grefcoco"
    write_json(folder / "instances.json", instances)
    refs = grefs(scenes, instances, rng)
    write_json(folder / "grefs(unc).json", refs)
    per_split: dict[str, int] = {}
    for ref in refs:
        per_split[ref["split"]] = per_split.get(ref["split"], 0) + 1
    return {"paths": [rel(folder / "grefs(unc).json", data.parent),
                      rel(folder / "instances.json", data.parent)],
            "images": len(scenes), "refs": per_split,
            "no_target": sum(r["no_target"] for r in refs)}
