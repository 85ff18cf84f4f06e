"""The overlay picture: original beside the overlay, fills, inner outlines and number boxes in the
legend colours, legend below. Pure numpy/PIL, no model."""

import numpy as np
import pytest
from PIL import Image

from pixellm.visualize import (
    GAP,
    LINE_H,
    OUTLINE,
    _depth,
    _innermost,
    _text_colour,
    colour,
    overlay,
)

H, W = 60, 160  # wide enough that the canvas is 2W + GAP, not the legend's 240 px minimum
GREY = (200, 200, 200)
GREEN = (40, 170, 60)


def _square(y0, y1, x0, x1, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def _green_square_image():
    """Grey (H x W) with a green square at rows 10:50, columns 20:80 (the pink mask's area)."""
    px = np.full((H, W, 3), GREY, np.uint8)
    px[10:50, 20:80] = GREEN
    return Image.fromarray(px)


def _right(out, h=H, w=W):
    """The overlay panel: the right half of the picture, above the legend."""
    return np.asarray(out)[:h, w + GAP:2 * w + GAP].astype(int)


def _is(px, rgb):
    """(...,) bool: which pixels are exactly `rgb`."""
    return (np.asarray(px) == np.array(rgb)).all(-1)


def test_original_on_the_left_overlay_on_the_right_legend_below():
    image = _green_square_image()
    mask = _square(10, 50, 20, 80)
    out = overlay(image, [mask], ["the green square"])
    assert out.mode == "RGB"
    assert out.width == 2 * W + GAP and out.height == H + LINE_H + 4
    px = np.asarray(out)
    assert np.array_equal(px[:H, :W], np.asarray(image))  # the original, untouched
    assert (px[:H, W:W + GAP] == 255).all()  # a white gap between the two
    right = _right(out)
    assert not np.array_equal(right[mask], np.asarray(image)[mask])
    assert np.array_equal(right[~mask], np.asarray(image)[~mask])  # off every mask: the original


def test_outline_is_exactly_the_legend_colour_and_stays_inside_the_mask():
    """Pink (colour 0) over a green square: the fill blends to a brownish tone, the outline does
    not."""
    image = _green_square_image()
    pink = colour(0)
    mask = _square(10, 50, 20, 80)
    right = _right(overlay(image, [mask], ["the green square"]))
    inner = _square(10 + OUTLINE, 50 - OUTLINE, 20 + OUTLINE, 80 - OUTLINE)
    rim = mask & ~inner
    assert _is(right[rim], pink).all()  # every outline pixel, corners included
    # one pixel past the edge is the original: the outline never leaves the mask
    assert (right[9, 20:80] == GREY).all() and (right[50, 20:80] == GREY).all()
    assert (right[10:50, 19] == GREY).all() and (right[10:50, 80] == GREY).all()
    # the first pixel inside the rim is fill, not outline
    assert not _is(right[10 + OUTLINE, 30:40], pink).any()


def test_interior_is_a_blend_of_the_image_and_the_colour():
    image = _green_square_image()
    mask = _square(10, 50, 20, 80)
    alpha = 0.35
    right = _right(overlay(image, [mask], ["the green square"], alpha=alpha))
    # 8 px in from the corner: far from the outline and from the number box at the centre
    px = right[18, 28]
    assert not np.array_equal(px, GREEN) and not np.array_equal(px, colour(0))
    expected = np.rint((1 - alpha) * np.array(GREEN) + alpha * np.array(colour(0)))
    assert np.abs(px - expected).max() <= 1
    # alpha is still honoured: a heavier fill is closer to the colour
    heavy = _right(overlay(image, [mask], ["x"], alpha=0.8))[18, 28]
    assert np.abs(heavy - colour(0)).sum() < np.abs(px - colour(0)).sum()


def test_number_box_sits_at_the_innermost_point_with_contrasting_text():
    image = _green_square_image()
    mask = _square(10, 50, 20, 80)  # innermost point about (x=50, y=30)
    right = _right(overlay(image, [mask], ["the green square"]))
    window = right[22:39, 42:59]
    box = _is(window, colour(0))
    assert box.sum() >= 30  # the filled box, away from the outline
    # the digit: pixels close to the chosen text colour (black on this pink) inside the window
    text = np.array(_text_colour(colour(0)))
    assert (np.abs(window - text).sum(-1) < 60).sum() >= 4
    # nothing of the box far from the innermost point
    assert not _is(right[14:20, 24:36], colour(0)).any()


def test_each_mask_gets_its_own_number_and_colour():
    image = Image.new("RGB", (W, H), GREY)
    a, b = _square(5, 55, 5, 60), _square(5, 55, 90, 155)
    right = _right(overlay(image, [a, b], ["left", "right"]))
    assert _is(right[5, 5:60], colour(0)).all() and _is(right[5, 90:155], colour(1)).all()
    # each number box is in its own mask's colour, at its own mask's centre
    assert _is(right[22:38, 24:42], colour(0)).sum() >= 30
    assert _is(right[22:38, 114:132], colour(1)).sum() >= 30
    assert not _is(right[22:38, 114:132], colour(0)).any()


def test_later_fills_do_not_tint_earlier_outlines():
    image = Image.new("RGB", (W, H), GREY)
    a, b = _square(10, 50, 20, 80), _square(20, 60, 60, 120)  # b covers a's right edge
    right = _right(overlay(image, [a, b], ["a", "b"]))
    assert _is(right[25:45, 78:80], colour(0)).all()  # a's rim inside b, still a's colour
    assert _is(right[58:60, 90:110], colour(1)).all()  # b's rim at the image border


def test_number_box_is_clamped_inside_the_image():
    image = Image.new("RGB", (W, H), GREY)
    corner = _square(H - 3, H, W - 3, W)  # a tiny mask in the bottom-right corner
    right = _right(overlay(image, [corner], ["speck"]))
    ys, xs = np.nonzero(_is(right, colour(0)))
    # a whole box (about 10 x 12 px), flush with the panel's corner rather than cut off by it
    assert ys.max() == H - 1 and xs.max() == W - 1
    assert ys.max() - ys.min() + 1 >= 10 and xs.max() - xs.min() + 1 >= 8
    # and nothing spilled into the gap or the legend
    px = np.asarray(overlay(image, [corner], ["speck"]))
    assert (px[:H, W:W + GAP] == 255).all()


def test_innermost_point_of_a_bar_is_its_middle():
    bar = _square(20, 25, 10, 150)
    x, y = _innermost(_depth(bar))
    assert y == 22 and abs(x - 79.5) <= 1


def test_text_colour_contrasts():
    assert _text_colour((210, 245, 60)) == (0, 0, 0)  # yellow-green: black text
    assert _text_colour((145, 30, 180)) == (255, 255, 255)  # purple: white text
    assert _text_colour((0, 0, 0)) == (255, 255, 255)
    assert _text_colour((255, 255, 255)) == (0, 0, 0)


def test_empty_mask_gets_a_legend_line_but_no_drawing():
    image = _green_square_image()
    empty = np.zeros((H, W), bool)
    square = _square(10, 50, 20, 80)
    out = overlay(image, [empty, square], ["nothing", "the green square"], title="Q: hi")
    assert out.height == H + 3 * LINE_H + 4  # title + two phrase lines
    right = _right(out)
    assert not _is(right, colour(0)).any()  # no outline or number for the empty mask
    assert _is(right[10, 20:80], colour(1)).all()
    # the empty mask's legend line (the second line, after the title) is in its colour: reddish
    line = np.asarray(out)[H + 2 + LINE_H:H + 2 + 2 * LINE_H].astype(int)
    inked = line[line.sum(-1) < 600]  # the well-inked pixels, not the anti-aliased fringe
    assert len(inked) > 0 and (inked[:, 0] > inked[:, 1] + 40).all()


def test_no_masks_at_all():
    image = _green_square_image()
    out = overlay(image, [], [])
    assert np.array_equal(_right(out), np.asarray(image))
    assert out.height > H


def test_wrong_size_mask_names_both_sizes():
    image = _green_square_image()
    with pytest.raises(ValueError, match=r"\(10, 12\).*\(60, 160\)"):
        overlay(image, [np.zeros((10, 12), bool)], ["bad"])
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, [], [], alpha=1.5)


def test_input_image_and_masks_are_not_modified():
    image = _green_square_image()
    before = np.asarray(image).copy()
    mask = _square(10, 50, 20, 80)
    mask_before = mask.copy()
    overlay(image, [mask], ["the green square"], 0.5, "title")  # positional alpha still works
    assert np.array_equal(np.asarray(image), before) and image.mode == "RGB"
    assert np.array_equal(mask, mask_before)


def test_non_rgb_input_and_small_images():
    grey = Image.new("L", (30, 20), 128)
    m = _square(2, 18, 2, 28, shape=(20, 30))
    out = overlay(grey, [m.astype(np.uint8)], ["thing"])  # 0/1 masks are read as bool
    assert out.width == 240  # the legend's minimum width
    assert np.array_equal(np.asarray(out)[:20, :30], np.asarray(grey.convert("RGB")))
    assert _is(_right(out, 20, 30)[2, 2:28], colour(0)).all()
