"""Scenes of the synthetic shapes task: coloured shapes on a plain or noisy grey background.

Vocabulary: 7 colours x 5 shapes. One colour per shape is held out of train/val and used only by
the ``compositional`` split (HELD_OUT_PAIRS):

    circle: purple   square: orange   triangle: blue   cross: yellow   diamond: red

Shapes never overlap (tight boxes at least 2 px apart), are drawn without anti-aliasing, and
each (colour, shape) pair appears at most once per image, so "the red circle" is unambiguous
and every mask pixel has exactly the shape's colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("purple", "circle"), ("orange", "square"), ("blue", "triangle"), ("yellow", "cross"), ("red", "diamond"),
})
"""(colour, shape) pairs that only the compositional split uses."""
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for s in SHAPES for c in COLOURS if (c, s) not in HELD_OUT_PAIRS
)
"""(colour, shape) pairs of the train and val splits."""
MIN_GAP = 2


@dataclass
class SceneObject:
    """One drawn shape. box: tight (x0, y0, x1, y1), inclusive; mask: (H, W) bool."""

    colour: str
    shape: str
    box: tuple[int, int, int, int]
    mask: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


def sample_scene(rng: np.random.Generator, size: int, pairs: tuple[tuple[str, str], ...] | list,
                 min_objects: int = 2, max_objects: int = 5) -> tuple[np.ndarray, list[SceneObject]]:
    """A (size, size, 3) uint8 image and its objects (distinct pairs drawn from `pairs`).

    Redraws (a few times) a scene that ends up with fewer than `min_objects` shapes for lack of room.
    """
    for _ in range(10):
        image, objects = _draw_scene(rng, size, pairs, min_objects, max_objects)
        if len(objects) >= min(min_objects, len(pairs)):
            break
    return image, objects


def _draw_scene(rng: np.random.Generator, size: int, pairs, min_objects: int,
                max_objects: int) -> tuple[np.ndarray, list[SceneObject]]:
    count = int(rng.integers(min_objects, max_objects + 1))
    chosen = rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
    image = _background(rng, size)
    objects: list[SceneObject] = []
    for k in chosen:
        colour, shape = pairs[int(k)]
        box = _place(rng, size, [o.box for o in objects])
        if box is None:
            continue
        mask = shape_mask(shape, box, size)
        ys, xs = np.nonzero(mask)
        objects.append(SceneObject(colour, shape, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())), mask))
        image[mask] = COLOURS[colour]
    return image, objects


def shape_mask(shape: str, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """(size, size) bool mask of `shape` filling the square `box` (x0, y0, x1, y1 inclusive)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "cross":
        t = max(2, (x1 - x0 + 1) // 3)
        a, b = round(cx - t / 2), round(cy - t / 2)
        draw.rectangle([x0, b, x1, b + t - 1], fill=255)
        draw.rectangle([a, y0, a + t - 1, y1], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.asarray(canvas) > 0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark grey, plain (half the images) or with mild per-pixel noise."""
    level = int(rng.integers(25, 100))
    image = np.full((size, size, 3), level, dtype=np.int16)
    if rng.random() < 0.5:
        image += rng.integers(-12, 13, size=(size, size, 3), dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, size: int, boxes: list[tuple[int, int, int, int]],
           tries: int = 40) -> tuple[int, int, int, int] | None:
    """A square box of side ~16-26% of the image, MIN_GAP px clear of `boxes`; None if no room."""
    lo = max(5, round(size * 0.16))
    hi = max(lo, round(size * 0.26))
    for _ in range(tries):
        side = int(rng.integers(lo, hi + 1))
        x0, y0 = (int(v) for v in rng.integers(1, size - side, size=2))
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        if all(_apart(box, other) for other in boxes):
            return box
    return None


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return (a[2] + MIN_GAP < b[0] or b[2] + MIN_GAP < a[0]
            or a[3] + MIN_GAP < b[1] or b[3] + MIN_GAP < a[1])
