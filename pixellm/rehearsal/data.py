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

import json
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from ..data.masks import encode_rle

SIZES = ((640, 480), (480, 640), (640, 427))
"""(width, height) of the written images: COCO's landscape, portrait and 3:2 shapes."""

COLORS = {
    "red": (200, 30, 35), "green": (40, 150, 60), "blue": (35, 70, 190), "yellow": (230, 205, 40),
    "white": (235, 235, 230), "black": (25, 25, 28), "orange": (235, 130, 30),
    "brown": (120, 75, 40), "gray": (128, 128, 128), "pink": (230, 140, 170),
    "purple": (120, 50, 150),
}
"""Object colours: each object is painted in the colour its expressions name."""

# COCO ids 1..91 (index = id - 1); the 11 ids COCO never annotates are kept, as COCO-Stuff does.
COCO_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat",
    "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "hair brush",
)
COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
COCO_CATEGORIES = tuple((i + 1, name) for i, name in enumerate(COCO_THINGS)
                        if i + 1 not in COCO_UNUSED_IDS)
"""The 80 annotated COCO categories as (id, name)."""

COCO_STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
COCOSTUFF_CLASSES = COCO_THINGS + COCO_STUFF
"""COCO-Stuff label k names class k (0..181; 255 = unlabeled)."""

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)
"""ADE20K SceneParsing's 150 classes: label k > 0 names class k - 1 (0 = other)."""

CLEF_CATEGORIES = tuple(enumerate((
    "man", "woman", "child", "group of persons", "tree", "rock", "mountain", "building", "car",
    "boat", "bicycle", "dog", "horse", "bird", "statue", "window", "door", "fountain", "bench",
    "umbrella",
), start=1))
"""ImageCLEF (SAIAPR TC-12) object categories used by RefCLEF, as (id, name)."""

# Semseg scenes: a sky/wall band above a ground band, objects in front (names index the lists).
ADE_TOP = ("sky", "wall", "building", "tree", "mountain", "ceiling")
ADE_GROUND = ("floor", "road", "grass", "sidewalk", "earth", "water", "sand", "field")
ADE_OBJECTS = ("person", "car", "chair", "table", "lamp", "plant", "sofa", "bed", "cabinet",
               "painting", "bottle", "box", "bench", "flower", "book", "bicycle", "clock", "vase")
STUFF_TOP = ("sky-other", "clouds", "wall-concrete", "wall-other", "building-other", "tree",
             "mountain", "ceiling-tile")
STUFF_GROUND = ("grass", "road", "pavement", "sand", "floor-wood", "dirt", "sea", "snow", "rug")
STUFF_OBJECTS = ("person", "car", "dog", "chair", "bottle", "cup", "bench", "umbrella", "bicycle",
                 "potted plant", "book", "bowl", "bus", "kite")

SPLITS = {"unc": ("train", "val", "testA"), "umd": ("train", "val", "test")}
"""(train, val, test) split names of a REFER split-by."""


# ------------------------------------------------------------------ shapes and pixels


@dataclass
class Obj:
    """One painted object: COCO polygons (flat [x0, y0, ...] lists), its category and colour."""

    polygons: list[list[float]]
    category_id: int
    name: str
    color: str
    bbox: list[float]
    area: float


@dataclass
class Scene:
    """One generated photo: (H, W, 3) uint8 pixels and its objects, back to front."""

    pixels: np.ndarray
    objects: list[Obj]

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def source_rng(seed: int, tag: str) -> np.random.Generator:
    """An independent generator per (seed, source): one source's output never depends on how
    much another one drew."""
    return np.random.default_rng([seed, zlib.crc32(tag.encode())])


def pick_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) of the next image; mostly landscape, like COCO."""
    return SIZES[int(rng.choice(len(SIZES), p=[0.5, 0.2, 0.3]))]


def unique_ids(rng: np.random.Generator, n: int, block: int) -> list[int]:
    """n distinct COCO-looking image ids from a source's own block of 50000 (no collisions
    between sources that share a folder, e.g. data/coco/train2017)."""
    return sorted(block * 50000 + int(v) for v in rng.choice(np.arange(1, 50000), n, replace=False))


def blob_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float, width: int,
                 height: int) -> list[float]:
    """A smooth closed outline of 16-64 vertices around (cx, cy): a circle perturbed by a few
    low harmonics (like an annotator's outline), clipped to the image, 2 decimals like COCO."""
    n = int(rng.integers(16, 65))
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 6):  # amplitudes sum below 0.33, so the radius stays positive
        r += rng.uniform(0, 0.25 / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    stretch = rng.uniform(0.6, 1.6)
    x = np.clip(cx + radius * stretch * r * np.cos(t), 0, width)
    y = np.clip(cy + radius / stretch * r * np.sin(t), 0, height)
    return np.round(np.stack([x, y], 1).ravel(), 2).tolist()


def polygons_area_bbox(polygons: list[list[float]], height: int, width: int) -> tuple[float, list]:
    """COCO `area` (rasterised pixels) and `bbox` [x, y, w, h] (polygon extent) of one object."""
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    xy = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polygons])
    x0, y0 = xy.min(0)
    x1, y1 = xy.max(0)
    bbox = [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]
    return float(mask_utils.area(rle)), bbox


def object_polygons(rng: np.random.Generator, width: int, height: int, crowded: bool) -> list:
    """One object's outline: usually one polygon, sometimes two (an object split by an
    occluder, which COCO stores as two polygons of one annotation)."""
    scale = min(width, height)
    radius = rng.uniform(0.04, 0.08) * scale if crowded else rng.uniform(0.07, 0.2) * scale
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    polys = [blob_polygon(rng, cx, cy, radius, width, height)]
    if rng.random() < 0.25:
        dx, dy = rng.uniform(-2, 2, 2) * radius
        cx2, cy2 = np.clip(cx + dx, 0, width), np.clip(cy + dy, 0, height)
        polys.append(blob_polygon(rng, cx2, cy2, radius * rng.uniform(0.4, 0.8), width, height))
    return polys


def smooth_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float smooth colour noise: a coarse random grid upsampled bicubically."""
    coarse = rng.uniform(40, 220, (height // 80 + 3, width // 80 + 3, 3)).astype(np.uint8)
    smooth = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    return np.asarray(smooth, dtype=np.float32)


def finish_pixels(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Shading and sensor-like noise on top of flat paint, so JPEGs have realistic sizes."""
    h, w = image.shape[:2]
    shade = smooth_background(rng, w, h)[..., :1] / 255.0 * 0.4 + 0.8
    noise = rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image * shade + noise, 0, 255).astype(np.uint8)


def coco_scene(rng: np.random.Generator, categories: tuple, crowded: bool = False) -> Scene:
    """A photo with 3-10 objects (20-30 small ones when `crowded`) of `categories` ((id, name)),
    painted back to front over a smooth background."""
    width, height = pick_size(rng)
    n = int(rng.integers(20, 31)) if crowded else int(rng.integers(3, 11))
    canvas = Image.fromarray(smooth_background(rng, width, height).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    objects = []
    for _ in range(n):
        cat_id, name = categories[int(rng.integers(len(categories)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        polygons = object_polygons(rng, width, height, crowded)
        for poly in polygons:
            draw.polygon(list(zip(poly[::2], poly[1::2])), fill=COLORS[color])
        area, bbox = polygons_area_bbox(polygons, height, width)
        objects.append(Obj(polygons, cat_id, name, color, bbox, area))
    return Scene(finish_pixels(rng, np.asarray(canvas, dtype=np.float32)), objects)


def write_jpeg(path: Path, pixels: np.ndarray) -> None:
    """Baseline JPEG at COCO-like quality; no metadata, so the bytes depend on pixels only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def object_mask(obj: Obj, height: int, width: int) -> np.ndarray:
    """(H, W) bool raster of an object's polygons (pycocotools, like the loaders)."""
    rle = mask_utils.merge(mask_utils.frPyObjects(obj.polygons, height, width))
    return mask_utils.decode(rle).astype(bool)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO uncompressed RLE (column-major runs starting with a zero run), the
    form COCO stores crowd regions in."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = ([0] if flat[0] else []) + np.diff(bounds).tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def position(obj: Obj, width: int, height: int) -> str:
    """Where the object's box centre lies: "left", "middle", "right" (+ "top"/"bottom")."""
    x, y, w, h = obj.bbox
    cx, cy = (x + w / 2) / width, (y + h / 2) / height
    horizontal = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "middle"
    vertical = "top " if cy < 0.3 else "bottom " if cy > 0.7 else ""
    return vertical + horizontal


def join_words(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def plural(name: str) -> str:
    if name.endswith("s"):
        return name
    return name + "es" if name.endswith(("ch", "sh", "x")) else name + "s"


def write_json(path: Path, obj) -> None:
    """Compact JSON like the released annotation files (and deterministic key order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")


def rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


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
