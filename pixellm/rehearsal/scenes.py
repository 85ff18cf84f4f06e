"""Rehearsal scenes: 640x480-class JPEG photos of smooth random shapes, the category vocabularies
of the real datasets, and the small helpers every layout writer shares (`data.py` writes them all)."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

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
