"""Rehearsal layouts with text answers: LLaVA-Instruct VQA, MUSE, ReasonSeg (LISA's LabelMe
layout) and custom JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.masks import encode_rle
from .scenes import (
    COCO_CATEGORIES,
    Obj,
    Scene,
    coco_scene,
    join_words,
    object_mask,
    plural,
    position,
    rel,
    uncompressed_rle,
    unique_ids,
    write_jpeg,
    write_json,
)

# ------------------------------------------------------------------ LLaVA-Instruct VQA


def describe(scene: Scene) -> str:
    """A LLaVA 'detail' style paragraph: one sentence for each of up to 6 objects. Kept to about
    a hundred words: a row holds 576 image tokens of the recipe's 1024, a text-only answer that
    does not fit is skipped (not cut), and the rehearsal's small tokenizer splits words finely."""
    parts = ["The image shows several objects in front of a blurred, colourful background."]
    for obj in scene.objects[:6]:
        where = position(obj, scene.width, scene.height)
        parts.append(f"There is a {obj.color} {obj.name} at the {where}.")
    parts.append("The objects are clearly separated from each other.")
    return " ".join(parts)


def vqa_turns(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """2-4 question/answer pairs about the scene (colour, count, position), or one detailed
    description, as LLaVA-Instruct mixes conversations and descriptions."""
    if rng.random() < 0.3:
        return [("Can you describe the main features of this image for me?", describe(scene))]
    turns = []
    for _ in range(int(rng.integers(2, 5))):
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        kind = int(rng.integers(3))
        if kind == 0:
            turns.append((f"What color is the {obj.name} in the image?",
                          f"The {obj.name} is {obj.color}."))
        elif kind == 1:
            count = sum(o.name == obj.name for o in scene.objects)
            noun = obj.name if count == 1 else plural(obj.name)
            turns.append((f"How many {plural(obj.name)} are there in the image?",
                          f"There {'is' if count == 1 else 'are'} {count} {noun} in the image."))
        else:
            turns.append((f"Where is the {obj.color} {obj.name} located?",
                          f"The {obj.color} {obj.name} is located at the "
                          f"{position(obj, scene.width, scene.height)} of the image."))
    return turns


def write_vqa(data: Path, n: int, rng: np.random.Generator) -> dict:
    """LLaVA-Instruct-150K: `llava_dataset/llava_instruct_150k.json` ([{id, image,
    conversations: [{from: human|gpt, value}]}]); the first question of a record carries
    "<image>\\n" (a few "\\n<image>" after it, as in the release); images in
    `coco/train2017/<12-digit id>.jpg`."""
    records, turns = [], 0
    for k, image_id in enumerate(unique_ids(rng, n, 3)):
        scene = coco_scene(rng, COCO_CATEGORIES, crowded=k == 0)
        write_jpeg(data / "coco" / "train2017" / f"{image_id:012d}.jpg", scene.pixels)
        conv = []
        for t, (question, answer) in enumerate(vqa_turns(scene, rng)):
            if t == 0:
                question = f"{question}\n<image>" if k % 4 == 3 else f"<image>\n{question}"
            conv += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        turns += len(conv) // 2
        records.append({"id": f"{image_id:012d}", "image": f"{image_id:012d}.jpg",
                        "conversations": conv})
    path = data / "llava_dataset" / "llava_instruct_150k.json"
    write_json(path, records)
    return {"paths": [rel(path, data.parent)], "images": n, "records": n, "turns": turns}


# ------------------------------------------------------------------ MUSE


def muse_segmentation(obj: Obj, scene: Scene, index: int):
    """Polygons for most instances; the 5th of every 6 instances of a question is uncompressed
    RLE and the 6th compressed RLE, so every many-target question holds all three encodings the
    release mixes."""
    if index % 6 < 4:
        return obj.polygons
    mask = object_mask(obj, scene.height, scene.width)
    return uncompressed_rle(mask) if index % 6 == 4 else encode_rle(mask)


def muse_instance(obj: Obj, scene: Scene, index: int) -> dict:
    return {"segmentation": muse_segmentation(obj, scene, index), "bbox": obj.bbox,
            "area": obj.area, "category_id": obj.category_id, "category_name": obj.name,
            "rephrased_name": f"the {obj.color} {obj.name}"}


def muse_question(scene: Scene, rng: np.random.Generator, many: bool, none: bool) -> tuple:
    """(question, target objects, text answer with one {seg} per target or None)."""
    if none:
        present = {o.name for o in scene.objects}
        absent = next(n for _, n in COCO_CATEGORIES if n not in present)
        return (f"Is there a {absent} here that I could use to keep things dry?", [],
                f"No, I cannot see any {absent} in this picture.")
    k = len(scene.objects)
    count = min(k, int(rng.integers(8, 16))) if many else min(k, int(rng.integers(1, 4)))
    objs = [scene.objects[int(j)] for j in sorted(rng.choice(k, count, replace=False))]
    if many:
        question = ("I am tidying up this place. Which of the things in view should I put away, "
                    "and where is each of them?")
        names = join_words([f"the {o.color} {o.name} {{seg}}" for o in objs])
        text = f"You should put away {names}; they are spread across the whole picture."
    else:
        question = (f"Which object here would help me if I needed something {objs[0].color}, "
                    f"and what else goes with it?")
        text = "You can use " + join_words([f"the {o.color} {o.name} {{seg}}" for o in objs]) + "."
    return question, objs, None if rng.random() < 0.2 else text


def muse_record(scene: Scene, image_id: int, location: dict, rng: np.random.Generator,
                first: bool) -> dict:
    """One MUSE image record; the first one of a file asks a many-target (8-15) question and a
    no-target one."""
    questions, answers, texts = [], [], []
    kinds = [(True, False), (False, True)] if first else []
    kinds += [(False, False)] * int(rng.integers(1, 3))
    for many, none in kinds:
        question, objs, text = muse_question(scene, rng, many, none)
        questions.append(question)
        answers.append([muse_instance(o, scene, j) for j, o in enumerate(objs)])
        texts.append(text)
    return {**location, "height": scene.height, "width": scene.width, "image_id": image_id,
            "questions": questions, "answers": answers, "text_answers": texts}


def muse_location(image_id: int, split: str, k: int) -> tuple[dict, str]:
    """(file_name or coco_url entry, image path under data/coco/) as the release stores them:
    train records name a train2014 `file_name` or a train2017 `coco_url`, val records mostly a
    val2017 `coco_url`."""
    if (split == "train" and k % 2 == 0) or (split != "train" and k % 3 == 2):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        return {"file_name": name}, f"train2014/{name}"
    folder = "train2017" if split == "train" else "val2017"
    name = f"{image_id:012d}.jpg"
    return {"coco_url": f"http://images.cocodataset.org/{folder}/{name}"}, f"{folder}/{name}"


def write_muse(data: Path, n: int, split: str, rng: np.random.Generator) -> dict:
    """MUSE: `muse/muse_<split>.json` (see pixellm.data.muse) with images under `coco/`."""
    records, questions, targets = [], 0, []
    for k, image_id in enumerate(unique_ids(rng, n, 1 if split == "train" else 2)):
        scene = coco_scene(rng, COCO_CATEGORIES, crowded=k == 0)
        location, image_path = muse_location(image_id, split, k)
        write_jpeg(data / "coco" / image_path, scene.pixels)
        records.append(muse_record(scene, image_id, location, rng, first=k == 0))
        questions += len(records[-1]["questions"])
        targets += [len(a) for a in records[-1]["answers"]]
    path = data / "muse" / f"muse_{split}.json"
    write_json(path, records)
    return {"paths": [rel(path, data.parent)], "images": n, "records": n, "questions": questions,
            "instances": sum(targets), "max_targets": max(targets),
            "no_target_questions": targets.count(0)}


# ------------------------------------------------------------------ ReasonSeg (LISA's layout)

REASONING = (
    "If you wanted something {color} from the {pos} of this picture, which object would you pick up?",
    "Which object here is the one a person would most likely reach for first, and why that {name}?",
    "What in this scene could you use if you needed a {name}-like thing that is {color}?",
)


def labelme_shape(label: str, polygon: list[float]) -> dict:
    """One LabelMe polygon shape (points as [x, y] float pairs, as LISA's files store them)."""
    return {"label": label, "points": [[x, y] for x, y in zip(polygon[::2], polygon[1::2])],
            "group_id": None, "shape_type": "polygon", "flags": {}}


def reasonseg_annotation(scene: Scene, rng: np.random.Generator, is_sentence: bool) -> dict:
    """`<stem>.json`: queries about one object (all its polygons labelled "target"), another
    object labelled "ignore" where there is one, and on every other image a "flag" shape."""
    target = scene.objects[int(rng.integers(len(scene.objects)))]
    pos = position(target, scene.width, scene.height)
    if is_sentence:
        text = [t.format(color=target.color, pos=pos, name=target.name) for t in REASONING[:2]]
    else:
        text = [f"the {target.color} {target.name}", f"{target.name} on the {pos}"]
    shapes = [labelme_shape("target", poly) for poly in target.polygons]
    others = [o for o in scene.objects if o is not target]
    if others:
        shapes += [labelme_shape("ignore", poly) for poly in others[int(rng.integers(len(others)))].polygons]
    if rng.random() < 0.5:
        shapes.append(labelme_shape("flag", [5.0, 5.0, 40.0, 5.0, 40.0, 30.0]))
    return {"text": text, "is_sentence": is_sentence, "shapes": shapes}


def write_reasonseg(data: Path, n: int, rng: np.random.Generator) -> dict:
    """ReasonSeg: `reasonseg/{train,val}/<stem>.jpg` + `<stem>.json` (see pixellm.data.reasonseg),
    `n` images per split, short and long queries alternating."""
    for split in ("train", "val"):
        folder = data / "reasonseg" / split
        for k in range(n):
            scene = coco_scene(rng, COCO_CATEGORIES)
            stem = f"{int(rng.integers(10**9, 10**10))}_{k:03d}"
            write_jpeg(folder / f"{stem}.jpg", scene.pixels)
            write_json(folder / f"{stem}.json", reasonseg_annotation(scene, rng, is_sentence=k % 2 == 1))
    return {"paths": [rel(data / "reasonseg", data.parent)], "images": n, "splits": ["train", "val"]}


# ------------------------------------------------------------------ custom JSONL


def custom_masks(scene: Scene, objs: list[Obj], stem: str, folder: Path, first: int) -> list:
    """Each target's mask in one of the custom format's three forms, in turn (`first`: how many
    masks the file had before): a PNG path (relative to the image root), a compressed RLE, a
    polygon list."""
    out = []
    for j, obj in enumerate(objs):
        form = (first + j) % 3
        if form == 0:
            mask = object_mask(obj, scene.height, scene.width)
            name = f"masks/{stem}_{first + j}.png"  # unique across the file
            (folder / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / name)
            out.append(name)
        elif form == 1:
            out.append(encode_rle(object_mask(obj, scene.height, scene.width)))
        else:
            out.append(obj.polygons)
    return out


def write_custom(data: Path, n: int, rng: np.random.Generator) -> dict:
    """Custom JSONL (README "Custom data"): `custom/train.jsonl`, images `custom/images/<n>.jpg`,
    PNG masks `custom/masks/<n>_<mask index>.png`; each line has one to three targeted
    conversations and one without a target."""
    folder, lines, conversations, masks = data / "custom", [], 0, 0
    for k in range(n):
        scene = coco_scene(rng, COCO_CATEGORIES, crowded=k == 0)
        stem = f"{k:06d}"
        write_jpeg(folder / "images" / f"{stem}.jpg", scene.pixels)
        convs = []
        for _ in range(int(rng.integers(1, 4))):
            count = min(len(scene.objects), int(rng.integers(1, 5)))
            picks = sorted(rng.choice(len(scene.objects), count, replace=False))
            objs = [scene.objects[int(j)] for j in picks]
            phrases = [f"{o.color} {o.name}" for o in objs]
            answer = "Sure: " + join_words([f"the {p} <seg>" for p in phrases]) + "."
            convs.append({"question": f"Please segment the {join_words(phrases)}.",
                          "answer": answer, "phrases": phrases,
                          "masks": custom_masks(scene, objs, stem, folder, masks)})
            masks += len(objs)
        present = {o.name for o in scene.objects}
        absent = next(n for _, n in COCO_CATEGORIES[::-1] if n not in present)
        convs.append({"question": f"Where is the {absent}?",
                      "answer": f"There is no {absent} in the image."})
        conversations += len(convs)
        line = {"image": f"images/{stem}.jpg", "image_id": k, "conversations": convs}
        lines.append(json.dumps(line, separators=(",", ":")))
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"paths": [rel(path, data.parent)], "images": n, "records": n,
            "conversations": conversations, "masks": masks}
