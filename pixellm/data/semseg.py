"""Semantic segmentation data (ADE20K, COCO-Stuff) as class-name referring questions.

Layouts (label PNGs share the image's file stem):

- ``ade20k``: ``<root>/images/{training,validation}/*.jpg`` and
  ``<root>/annotations/{training,validation}/*.png``; label 0 is "other" (ignored), label k > 0
  is class ``class_names[k - 1]``. Names come from the ``class_names`` argument or
  ``<root>/classes.json`` (a JSON list, 150 names for ADE20K).
- ``cocostuff``: ``<root>/images/{train2017,val2017}/*.jpg`` and
  ``<root>/annotations/{train2017,val2017}/*.png``; label 255 is ignored, label k is class
  ``class_names[k]``, names from ``<root>/classes.txt`` (one per line). Classes whose name
  contains "-" (e.g. "wall-brick", "sky-other") are skipped, as in the reference.

Each image's present classes are shuffled with a (seed, image) generator and cut into questions
of up to ``max_classes_per_question`` classes: "Segment the a, b and c." ->
"a <seg>, b <seg> and c <seg>.". Masks are decoded from the label map here, once, and stored as
compressed RLE so that `decode_mask` stays the single decoder.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from ..constants import SEG_PLACEHOLDER
from .errors import DataError, Problem
from .masks import encode_rle
from .records import QARecord

LAYOUTS = {
    # layout: (split aliases -> folder, ignore label, label offset (class index = label - offset))
    "ade20k": ({"train": "training", "val": "validation"}, 0, 1),
    "cocostuff": ({"train": "train2017", "val": "val2017"}, 255, 0),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_semseg(root: Path, layout: str, split: str, max_classes_per_question: int = 3, seed: int = 0,
                class_names: list[str] | None = None) -> list[QARecord]:
    """QARecords for every image of `split` ("train"/"val" or the folder name, e.g. "training").

    Raises DataError (file and reason) for a missing folder, class list or label map, a label
    outside the class list, or a label map sized unlike its image.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown semseg layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    if max_classes_per_question < 1:
        raise ValueError("max_classes_per_question must be at least 1")
    root = Path(root)
    aliases, ignore, offset = LAYOUTS[layout]
    folder = aliases.get(split, split)
    names = list(class_names) if class_names is not None else read_class_names(root, layout)
    image_dir, label_dir = root / "images" / folder, root / "annotations" / folder
    if not image_dir.is_dir():
        raise DataError(Problem(str(image_dir), "folder", f"not found (layout {layout}, split {split})"))
    records: list[QARecord] = []
    for image_path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label_path = label_dir / f"{image_path.stem}.png"
        labels = _read_labels(label_path, image_path)
        classes = _present_classes(labels, ignore, offset, names, label_path, layout)
        rng = random.Random(f"{seed}:{image_path.stem}")
        rng.shuffle(classes)
        for g in range(0, len(classes), max_classes_per_question):
            group = classes[g:g + max_classes_per_question]
            records.append(_question(layout, image_path, g // max_classes_per_question, group, labels, offset, names))
    return records


def read_class_names(root: Path, layout: str) -> list[str]:
    """``classes.json`` (ade20k, JSON list) or ``classes.txt`` (cocostuff, one per line)."""
    path = Path(root) / ("classes.json" if layout == "ade20k" else "classes.txt")
    try:
        if layout == "ade20k":
            names = json.loads(path.read_text(encoding="utf-8"))
        else:
            names = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except FileNotFoundError:
        raise DataError(Problem(str(path), "file", "class names not found (pass class_names or add the file)")) from None
    except (OSError, ValueError) as e:
        raise DataError(Problem(str(path), "file", f"cannot be read: {e}")) from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(Problem(str(path), "file", "expected a list of class-name strings"))
    return [n.strip() for n in names]


def join_phrases(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _read_labels(label_path: Path, image_path: Path) -> np.ndarray:
    """The (H, W) integer label map, checked against the image's size."""
    try:
        with Image.open(label_path) as im:
            labels = np.asarray(im)
        with Image.open(image_path) as im:
            width, height = im.size
    except FileNotFoundError as e:
        raise DataError(Problem(str(e.filename or label_path), "file", "not found")) from None
    except Exception as e:  # PIL: OSError, SyntaxError, ...
        raise DataError(Problem(str(label_path), "file", f"does not decode: {e}")) from None
    if labels.ndim != 2:
        raise DataError(Problem(str(label_path), "file", f"a label map must be single-channel, got shape {labels.shape}"))
    if labels.shape != (height, width):
        raise DataError(Problem(str(label_path), "file",
                                f"label map is {labels.shape[1]}x{labels.shape[0]}, the image is {width}x{height}"))
    return labels


def _present_classes(labels: np.ndarray, ignore: int, offset: int, names: list[str],
                     label_path: Path, layout: str) -> list[int]:
    """Sorted label values present in the map that name a usable class."""
    present = []
    for value in np.unique(labels).tolist():
        if value == ignore:
            continue
        index = value - offset
        if not 0 <= index < len(names):
            raise DataError(Problem(str(label_path), "file",
                                    f"label {value} is outside the {len(names)} class names of {layout}"))
        name = names[index]
        if not name or (layout == "cocostuff" and "-" in name):
            continue
        present.append(value)
    return present


def _question(layout: str, image_path: Path, g: int, group: list[int], labels: np.ndarray,
              offset: int, names: list[str]) -> QARecord:
    phrases = [names[v - offset] for v in group]
    height, width = labels.shape
    return QARecord(
        source=layout, image_path=image_path, image_id=image_path.stem,
        question_id=f"{image_path.stem}:{g}",
        question=f"Segment the {join_phrases(phrases)}.",
        answer=join_phrases([f"{p} {SEG_PLACEHOLDER}" for p in phrases]) + ".",
        masks=[encode_rle(labels == v) for v in group], phrases=phrases, height=height, width=width,
    )
