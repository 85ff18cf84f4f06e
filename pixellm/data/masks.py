"""Decoding masks from every stored form (polygons, RLE, mask files) with pycocotools and PIL,
after checking that the stored form is sound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from .images import ImageReadError, read_mask
from .records import MaskSpec


class MaskDecodeError(ValueError):
    """A mask that cannot be decoded, or decodes to the wrong size."""


def decode_mask(spec: MaskSpec, height: int, width: int, root: Path | None = None) -> np.ndarray:
    """One target's mask as a (height, width) bool array: the one decoder of validation,
    training and evaluation. Everything is checked before pycocotools allocates anything (its
    rasteriser allocates in proportion to the coordinates, and decodes runs that do not cover
    the image into uninitialised memory).

    spec: COCO polygons (list of flat [x0, y0, x1, y1, ...] lists, >= 3 points each, finite and
    inside the image up to `polygon_tolerance`, then clipped; parts are merged), uncompressed
    RLE ({"size": [h, w], "counts": [run lengths]}), compressed RLE (counts a COCO string), or
    a mask file path relative to `root` (images.read_mask: non-zero = object).
    Raises MaskDecodeError with the reason.
    """
    if isinstance(spec, (str, Path)):
        return _decode_file(Path(root or ".") / spec, height, width)
    if isinstance(spec, dict):
        return _decode_rle(spec, height, width)
    if isinstance(spec, list):
        return _decode_polygons(spec, height, width)
    raise MaskDecodeError(f"unknown segmentation type {type(spec).__name__}")


def polygon_tolerance(height: int, width: int) -> float:
    """How far (pixels) a polygon point may lie outside the image before it is an error rather
    than an annotation tool's rounding: 1% of the longer side, at least 2 px."""
    return max(2.0, 0.01 * max(height, width))


def _decode_polygons(spec: list, height: int, width: int) -> np.ndarray:
    if not spec or not all(isinstance(p, list) for p in spec):
        raise MaskDecodeError("polygon segmentation must be a non-empty list of coordinate lists")
    polys = [_checked_polygon(p, k, height, width) for k, p in enumerate(spec)]
    rles = mask_utils.frPyObjects(polys, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _checked_polygon(poly: list, index: int, height: int, width: int) -> list[float]:
    """Polygon `index` with its points clipped to the image, or MaskDecodeError naming why not."""
    where = f"polygon {index}"
    if len(poly) < 6 or len(poly) % 2:
        raise MaskDecodeError(f"{where}: a polygon needs an even number (>= 6, 3 points) of numbers, got {len(poly)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
        raise MaskDecodeError(f"{where}: coordinates must be numbers")
    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(xy).all():
        bad = xy[~np.isfinite(xy).all(1)][0]
        raise MaskDecodeError(f"{where}: point ({bad[0]:g}, {bad[1]:g}) is not finite")
    tol = polygon_tolerance(height, width)
    outside = (xy[:, 0] < -tol) | (xy[:, 0] > width + tol) | (xy[:, 1] < -tol) | (xy[:, 1] > height + tol)
    if outside.any():
        x, y = xy[outside][0]
        raise MaskDecodeError(f"{where}: point ({x:g}, {y:g}) lies outside the {width}x{height} image "
                              f"(more than {tol:g} px)")
    xy[:, 0] = xy[:, 0].clip(0, width)
    xy[:, 1] = xy[:, 1].clip(0, height)
    return xy.ravel().tolist()


def _decode_rle(spec: dict, height: int, width: int) -> np.ndarray:
    if "counts" not in spec or "size" not in spec:
        raise MaskDecodeError(f"RLE needs 'size' and 'counts', got keys {sorted(spec)}")
    size = spec["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise MaskDecodeError(f"RLE 'size' must be [height, width] (two integers), got {size!r}")
    if list(size) != [height, width]:
        raise MaskDecodeError(f"RLE size {list(size)} differs from the image size {[height, width]}")
    counts = spec["counts"]
    if isinstance(counts, list):
        _check_runs(_integers(counts), height, width)
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": _integers(counts)}, height, width)
    elif isinstance(counts, (str, bytes)):
        data = counts.encode("ascii", errors="replace") if isinstance(counts, str) else counts
        _check_runs(compressed_counts(data), height, width)
        rle = {"size": [height, width], "counts": data}
    else:
        raise MaskDecodeError(f"RLE 'counts' must be a list of run lengths or a COCO string, got {type(counts).__name__}")
    return mask_utils.decode(rle).astype(bool)


def _integers(counts: list) -> list[int]:
    """Run lengths as ints (integral floats from numpy-made JSON are accepted)."""
    out = []
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or (isinstance(c, float) and not c.is_integer()):
            raise MaskDecodeError(f"RLE counts must be integers, found {c!r}")
        out.append(int(c))
    return out


def _check_runs(runs: list[int], height: int, width: int) -> None:
    """Run lengths must be >= 0 and cover the image exactly once."""
    if runs and min(runs) < 0:
        raise MaskDecodeError(f"RLE counts must be >= 0, found {min(runs)}")
    total = sum(runs)
    if total != height * width:
        raise MaskDecodeError(f"RLE counts sum to {total}, but the {height}x{width} image has {height * width} pixels")


def compressed_counts(data: bytes) -> list[int]:
    """The run lengths of a COCO compressed RLE string, checked as they are read.

    Each run is a little-endian base-32 varint: characters '0' + (5 data bits | 0x20 while more
    follow); the last chunk's 0x10 bit is the sign; from the fourth run on, the value is a delta
    to the run two before (pycocotools' rleFrString). MaskDecodeError on a character outside the
    alphabet or a string that ends inside a run.
    """
    runs: list[int] = []
    pos = 0
    while pos < len(data):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(data):
                raise MaskDecodeError(f"compressed RLE counts end inside a run (truncated after {len(data)} characters)")
            chunk = data[pos] - 48
            if not 0 <= chunk < 64:
                raise MaskDecodeError(f"compressed RLE counts hold {chr(data[pos])!r} at {pos}, not a COCO RLE character")
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            pos, shift = pos + 1, shift + 5
            if not more and chunk & 0x10:
                value -= 1 << shift  # sign-extend
        runs.append(value + (runs[-2] if len(runs) > 2 else 0))
    return runs


def _decode_file(path: Path, height: int, width: int) -> np.ndarray:
    try:
        mask = read_mask(path)
    except ImageReadError as e:
        raise MaskDecodeError(f"mask file {e}") from None
    if mask.shape != (height, width):
        raise MaskDecodeError(f"mask file {path} is {mask.shape[1]}x{mask.shape[0]}, the image is {width}x{height}")
    return mask


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO compressed RLE with str counts (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}
