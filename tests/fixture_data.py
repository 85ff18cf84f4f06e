"""Small real-format training data written by tests: MUSE JSON, LLaVA VQA JSON, custom JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_photo(path: Path, h: int, w: int, seed: int) -> None:
    """A random RGB JPEG (a stand-in for a COCO photo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def box_polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_muse(root: Path, num_images: int = 4, h: int = 40, w: int = 48) -> tuple[Path, Path]:
    """MUSE annotations with 1-3 polygon targets per question; returns (json, image root)."""
    images = root / "coco"
    records = []
    for i in range(num_images):
        write_photo(images / "train2014" / f"m{i}.jpg", h, w, seed=100 + i)
        answers = [[{"segmentation": box_polygon(2 + k * 10, 4, 9 + k * 10, 20 + i), "bbox": [0, 0, 1, 1],
                     "category_name": name} for k, name in enumerate(["cup", "plate", "fork"][: 1 + i % 3])]]
        records.append({"file_name": f"m{i}.jpg", "height": h, "width": w, "image_id": i,
                        "questions": [f"What is on table {i}?"], "answers": answers})
    ann = root / "muse_train.json"
    ann.write_text(json.dumps(records))
    return ann, images


def write_vqa(root: Path, num_images: int = 4, h: int = 40, w: int = 48) -> tuple[Path, Path]:
    """LLaVA-Instruct style conversations (text answers only); returns (json, image root)."""
    images = root / "vqa_images"
    records = []
    for i in range(num_images):
        write_photo(images / f"v{i}.jpg", h, w, seed=200 + i)
        records.append({"id": f"v{i}", "image": f"v{i}.jpg", "conversations": [
            {"from": "human", "value": f"<image>\nWhat colour is thing {i}?"},
            {"from": "gpt", "value": "It is red." if i % 2 else "A blue one."},
        ]})
    ann = root / "llava_instruct.json"
    ann.write_text(json.dumps(records))
    return ann, images
