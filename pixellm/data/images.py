"""Reading images and mask files: one function each, used by validation, training, evaluation,
inference and overlays, so that all of them see the same pixels.

Images (`read_image`): the EXIF orientation is applied (a phone stores the sensor's pixels plus
a rotation tag; masks are drawn on the rotated picture), 16-bit greyscale is scaled to 8 bits
(PIL's plain conversion clips it to white), palette, alpha, CMYK and float images become RGB.

Masks (`read_mask`), the rule for every file mode: non-zero = object, except
* palette images are read by index: index 0 is background whatever colour the palette gives it;
* images with an alpha channel whose colour channels are all zero (a shape painted in the
  alpha channel only) are read from the alpha channel.
The EXIF orientation is applied to masks too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_SWAPS_SIDES = {5, 6, 7, 8}
"""EXIF orientations that rotate by 90 degrees (width and height trade places)."""
_ORIENTATION = 0x0112


class ImageReadError(ValueError):
    """An image or mask file that is missing or does not decode (the message names the file)."""


def _open(path: Path) -> Image.Image:
    """The decoded, EXIF-transposed image (a copy: the file is closed)."""
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise ImageReadError(f"{path} not found") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise ImageReadError(f"{path} does not decode: {e}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16- and 32-bit greyscale are scaled from 0..65535 (PNG's
    16-bit range) instead of clipped; float images are taken as 0..1 when they fit it."""
    if im.mode.startswith("I"):
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(arr / 257.0, 0, 255).round().astype(np.uint8))
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if arr.size and arr.min() >= 0 and arr.max() <= 1 else 1.0
        im = Image.fromarray(np.clip(arr * scale, 0, 255).round().astype(np.uint8))
    return im.convert("RGB")


def read_image(path: str | Path) -> Image.Image:
    """An RGB image as users see it (EXIF orientation applied). ImageReadError if unusable."""
    return to_rgb(_open(Path(path)))


def image_size(path: str | Path, full_decode: bool = False) -> tuple[int, int]:
    """(height, width) after the EXIF orientation, from the header alone unless `full_decode`
    (which also proves that the pixels decode). ImageReadError if unusable."""
    path = Path(path)
    if full_decode:
        width, height = _open(path).size
        return height, width
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(_ORIENTATION)
    except FileNotFoundError:
        raise ImageReadError(f"{path} not found") from None
    except Exception as e:
        raise ImageReadError(f"{path} does not decode: {e}") from None
    return (width, height) if orientation in _SWAPS_SIDES else (height, width)



def cached_image_size(path: Path, cache: dict, full_decode: bool = True) -> tuple[int, int] | str:
    """`image_size`, remembered in `cache` per path (validators read each image once): the
    (height, width), or the reason the image does not read ("image ...")."""
    if path not in cache:
        try:
            cache[path] = image_size(path, full_decode=full_decode)
        except ImageReadError as e:
            cache[path] = f"image {e}"
    return cache[path]

def mask_from_image(im: Image.Image) -> np.ndarray:
    """(H, W) bool foreground of a decoded mask image, by the module's rule."""
    if im.mode == "P":
        return np.asarray(im) > 0  # palette indices, not the colours they stand for
    arr = np.asarray(im)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        colour, alpha = arr[..., :-1], arr[..., -1]
        return colour.any(-1) if colour.any() else alpha > 0
    return arr.any(-1) if arr.ndim == 3 else arr > 0


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as an (H, W) bool array (module rule; EXIF orientation applied)."""
    return mask_from_image(_open(Path(path)))
