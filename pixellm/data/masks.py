"""Decoding masks from every stored form (polygons, RLE, PNG) with pycocotools and PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .records import MaskSpec


class MaskDecodeError(ValueError):
    """A mask that cannot be decoded, or decodes to the wrong size."""


def decode_mask(spec: MaskSpec, height: int, width: int, root: Path | None = None) -> np.ndarray:
    """One target's mask as a (height, width) bool array.

    spec: COCO polygons (list of flat [x0, y0, x1, y1, ...] lists; parts are merged),
    uncompressed RLE ({"size": [h, w], "counts": [ints]}), compressed RLE (counts str/bytes),
    or a PNG path (relative to `root`; non-zero pixels are foreground).
    """
    if isinstance(spec, (str, Path)):
        return _decode_png(Path(root or ".") / spec, height, width)
    if isinstance(spec, dict):
        if "counts" not in spec or "size" not in spec:
            raise MaskDecodeError(f"RLE needs 'size' and 'counts', got keys {sorted(spec)}")
        if list(spec["size"]) != [height, width]:
            raise MaskDecodeError(f"RLE size {list(spec['size'])} differs from the image size {[height, width]}")
        rle = spec
        if isinstance(spec["counts"], list):  # uncompressed
            rle = mask_utils.frPyObjects(spec, height, width)
        elif isinstance(spec["counts"], str):
            rle = {"size": spec["size"], "counts": spec["counts"].encode()}
        try:
            return mask_utils.decode(rle).astype(bool)
        except Exception as e:  # pycocotools raises bare errors on corrupt counts
            raise MaskDecodeError(f"corrupt RLE counts: {e}") from None
    if isinstance(spec, list):
        polys = [p for p in spec if isinstance(p, list)]
        if not polys or len(polys) != len(spec):
            raise MaskDecodeError("polygon segmentation must be a non-empty list of coordinate lists")
        for p in polys:
            if len(p) < 6 or len(p) % 2 or not all(isinstance(v, (int, float)) for v in p):
                raise MaskDecodeError(f"a polygon needs an even number (>= 6) of numbers, got {len(p)}")
        rles = mask_utils.frPyObjects(polys, height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    raise MaskDecodeError(f"unknown segmentation type {type(spec).__name__}")


def _decode_png(path: Path, height: int, width: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise MaskDecodeError(f"mask file {path} not found") from None
    except OSError as e:
        raise MaskDecodeError(f"mask file {path} does not decode: {e}") from None
    if arr.shape != (height, width):
        raise MaskDecodeError(f"mask file {path} is {arr.shape[1]}x{arr.shape[0]}, the image is {width}x{height}")
    return arr > 0


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO compressed RLE with str counts (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}
