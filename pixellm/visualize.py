"""Colour overlays: each phrase and its mask drawn in the same colour."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128),
]


def colour(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def overlay(image: Image.Image, masks: list[np.ndarray], phrases: list[str], alpha: float = 0.5,
            title: str | None = None) -> Image.Image:
    """Blend each (H, W) bool mask over the image in its colour and list the phrases below it
    in the same colours. Returns a new RGB image (the input is not modified)."""
    base = np.asarray(image.convert("RGB")).astype(np.float32)
    for i, m in enumerate(masks):
        if m.shape != base.shape[:2]:
            raise ValueError(f"mask {i} is {m.shape}, the image is {base.shape[:2]}")
        base[m] = (1 - alpha) * base[m] + alpha * np.array(colour(i), np.float32)
    drawn = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    font = ImageFont.load_default()
    width = max(drawn.width, 240)
    chars = max(20, width // 6)  # the default bitmap font is about 6 px per character
    head = textwrap.wrap(title, chars) if title else []
    lines = [(t, (0, 0, 0)) for t in head]
    lines += [(t, colour(i)) for i, p in enumerate(phrases) for t in textwrap.wrap(f"[{i + 1}] {p}", chars)]
    line_h = 12
    canvas = Image.new("RGB", (width, drawn.height + line_h * len(lines) + 4), "white")
    canvas.paste(drawn, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, (text, fill) in enumerate(lines):
        draw.text((2, drawn.height + 2 + j * line_h), text, fill=fill, font=font)
    return canvas
