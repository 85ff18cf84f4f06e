"""Colour overlays: each phrase and its mask drawn in the same colour.

The picture is the original image on the left and the overlay on the right, with the legend
below both. Each mask gets a translucent fill, a solid outline and its number in its legend
colour: a blended fill alone changes hue over coloured objects (green under pink reads brown),
so the outline and the number box carry the exact colour the legend line is printed in.
"""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import distance_transform_edt

PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128),
]

GAP = 8  # white pixels between the original and the overlay
OUTLINE = 2  # outline width in pixels, drawn inside the mask
BOX_PAD = 2  # pixels between a number and the edge of its box
LINE_H = 12  # legend line height in pixels, for the default font


def colour(i: int) -> tuple[int, int, int]:
    """The RGB colour of mask/phrase i (0-based); the palette repeats after 10."""
    return PALETTE[i % len(PALETTE)]


def overlay(image: Image.Image, masks: list[np.ndarray], phrases: list[str], alpha: float = 0.35,
            title: str | None = None) -> Image.Image:
    """Draw the image (W x H) beside a copy with the (H, W) bool masks on it, and list the title
    (black) and the phrases as "[i] phrase" below both, each in its mask's colour.

    Mask i gets a fill blended at `alpha`, an outline of OUTLINE px inside its edge and the
    number i+1 on a box at its innermost pixel, both exactly colour(i). Empty masks are only
    listed. Returns a new RGB image of width max(2W + GAP, 240) and height > H; the input is
    not modified. Raises ValueError if a mask's shape is not (H, W) or alpha is outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    original = image.convert("RGB")  # a copy, also for an RGB input
    bool_masks = _check_masks(masks, (original.height, original.width))
    panel = _draw_masks(original, bool_masks, alpha)
    return _compose(original, panel, phrases, title)


def _check_masks(masks: list[np.ndarray], shape: tuple[int, int]) -> list[np.ndarray]:
    """The masks as (H, W) bool arrays; ValueError naming both sizes if one is not `shape`."""
    out = []
    for i, m in enumerate(masks):
        m = np.asarray(m)
        if m.shape != shape:
            raise ValueError(f"mask {i} is {m.shape}, the image is {shape}")
        out.append(m.astype(bool))
    return out


def _draw_masks(original: Image.Image, masks: list[np.ndarray], alpha: float) -> Image.Image:
    """The overlay panel (W x H): all fills, then all outlines, then all numbers, so that a later
    mask's fill never tints an earlier mask's outline or number."""
    px = np.asarray(original).astype(np.float32)  # (H, W, 3)
    for i, m in enumerate(masks):
        px[m] = (1 - alpha) * px[m] + alpha * np.array(colour(i), np.float32)
    px = np.rint(px).clip(0, 255).astype(np.uint8)
    depths = [_depth(m) for m in masks]
    for i, d in enumerate(depths):
        px[(d > 0) & (d <= OUTLINE)] = colour(i)  # depth <= OUTLINE: the inner rim, never outside
    panel = Image.fromarray(px)
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    for i, d in enumerate(depths):
        if d.max() > 0:  # an empty mask has nowhere to put its number
            _draw_number(draw, _innermost(d), str(i + 1), colour(i), panel.size, font)
    return panel


def _depth(mask: np.ndarray) -> np.ndarray:
    """(H, W) float: for mask pixels the Euclidean distance to the nearest pixel outside the mask,
    1 on its edge; 0 off the mask. The image border counts as outside (the pad), so masks that
    touch it are outlined there too and their numbers keep away from it."""
    return distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def _innermost(depth: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from the mask's edge. Ties (a plateau, the ridge of a
    long bar) go to the one nearest their mean, so a bar gets its number in the middle rather
    than at one end."""
    ys, xs = np.nonzero(depth == depth.max())
    k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    return int(xs[k]), int(ys[k])


def _draw_number(draw: ImageDraw.ImageDraw, at: tuple[int, int], text: str,
                 fill: tuple[int, int, int], size: tuple[int, int], font) -> None:
    """A box of colour `fill` centred on `at` (x, y) and clamped inside an image of `size`
    (W, H), with `text` on it in black or white."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    box_w, box_h = right - left + 2 * BOX_PAD, bottom - top + 2 * BOX_PAD
    # clamp so the whole box is visible; in an image smaller than the box it starts at 0
    x0 = max(0, min(at[0] - box_w // 2, size[0] - box_w))
    y0 = max(0, min(at[1] - box_h // 2, size[1] - box_h))
    draw.rectangle((x0, y0, x0 + box_w - 1, y0 + box_h - 1), fill=fill)
    draw.text((x0 + BOX_PAD - left, y0 + BOX_PAD - top), text, fill=_text_colour(fill), font=font)


def _text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast ratio against `rgb`."""
    lin = [c / 255 / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    # contrast with black (lum + 0.05) / 0.05 beats contrast with white 1.05 / (lum + 0.05)
    return (0, 0, 0) if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else (255, 255, 255)


def _compose(original: Image.Image, panel: Image.Image, phrases: list[str],
             title: str | None) -> Image.Image:
    """The original (W x H) at the left, the panel GAP px to its right, the legend below both
    on white."""
    width = max(2 * original.width + GAP, 240)  # at least room for a readable legend line
    lines = _legend(phrases, title, chars=max(20, width // 6))
    canvas = Image.new("RGB", (width, original.height + LINE_H * len(lines) + 4), "white")
    canvas.paste(original, (0, 0))
    canvas.paste(panel, (original.width + GAP, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for j, (text, fill) in enumerate(lines):
        draw.text((2, original.height + 2 + j * LINE_H), text, fill=fill, font=font)
    return canvas


def _legend(phrases: list[str], title: str | None,
            chars: int) -> list[tuple[str, tuple[int, int, int]]]:
    """(text, colour) lines wrapped at `chars`: the title in black, then "[i] phrase" in
    colour(i - 1). The default font is about 6 px per character."""
    lines = [(t, (0, 0, 0)) for t in (textwrap.wrap(title, chars) if title else [])]
    for i, p in enumerate(phrases):
        lines += [(t, colour(i)) for t in textwrap.wrap(f"[{i + 1}] {p}", chars)]
    return lines
