"""Every kind of bad record a real annotation export produces is refused with its reason or read
correctly, and never takes the machine's memory or decodes to garbage."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pixellm.data.images import image_size, read_image, read_mask
from pixellm.data.masks import MaskDecodeError, compressed_counts, decode_mask, encode_rle

H, W = 80, 96


def box(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


@pytest.mark.parametrize("spec,reason", [
    ([[10, 10, float("nan"), 10, 20, 30]], r"point \(nan, 10\) is not finite"),
    ([box(10, 10, 1e9, 30)], r"point \(1e\+09, 10\) lies outside the 96x80 image"),
    ([box(10, 10, 40, 30), box(-50, 5, 20, 30)], r"polygon 1: point \(-50, 5\) lies outside"),
    ([[10, 10, 20, 10]], r"even number \(>= 6, 3 points\)"),
    ([[10, 10, 20, 10, "x", 30]], "coordinates must be numbers"),
    ({"size": [H, W], "counts": [10, 20]}, r"RLE counts sum to 30, but the 80x96 image has 7680 pixels"),
    ({"size": [H, W], "counts": [7700, -20]}, "RLE counts must be >= 0, found -20"),
    ({"size": [H, W], "counts": [10, "x", 7660]}, "RLE counts must be integers"),
    ({"size": [H, W], "counts": "1P"}, r"compressed RLE counts end inside a run \(truncated"),
    ({"size": [H, W], "counts": "PPYo1"}, "RLE counts sum to 2073600, but the 80x96 image has 7680 pixels"),
    ({"size": [H, W], "counts": "ab cd"}, "not a COCO RLE character"),
    ({"size": "80x96", "counts": [7680]}, r"RLE 'size' must be \[height, width\]"),
    ({"size": [H, W, 3], "counts": [7680]}, r"RLE 'size' must be \[height, width\]"),
    ({"size": [H, W], "counts": 7680}, "RLE 'counts' must be a list of run lengths or a COCO string"),
])
def test_bad_masks_are_refused_with_their_reason(spec, reason):
    with pytest.raises(MaskDecodeError, match=reason):
        decode_mask(spec, H, W)


def test_a_truncated_compressed_rle_is_refused_not_decoded_into_garbage():
    mask = np.zeros((H, W), bool)
    mask[10:50, 20:70] = True
    mask[60:70, 5:9] = True
    counts = encode_rle(mask)["counts"]
    assert compressed_counts(counts.encode()) and decode_mask({"size": [H, W], "counts": counts}, H, W).sum() == mask.sum()
    for cut in range(1, len(counts)):  # every prefix: ends inside a run, or leaves the image short
        with pytest.raises(MaskDecodeError, match="truncated|sum to"):
            decode_mask({"size": [H, W], "counts": counts[:cut]}, H, W)


def test_points_just_outside_the_image_are_clipped():
    """Annotation tools round to the pixel edge or a little beyond: within 1% (>= 2 px) the
    point is clipped, and the mask equals the one drawn to the border."""
    inside = decode_mask([box(50, 40, 96, 80)], H, W)
    assert np.array_equal(decode_mask([box(50, 40, 97.5, 81)], H, W), inside)
    assert inside[79, 95] and inside.sum() > 0


def test_nan_and_huge_polygons_validate_in_little_memory(tmp_path):
    """pycocotools' rasteriser allocates in proportion to the coordinates (NaN or 1e308 took the
    whole machine); `pixellm validate-data` must refuse them before it rasterises."""
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    lines = [{"image": "a.png", "conversations": [{"question": "q?", "answer": "it <seg>.",
                                                   "masks": [[box(10, 10, x, 30)]]}]}
             for x in (float("nan"), 1e9, 1e308)]
    (tmp_path / "ann.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    probe = ("import resource, subprocess, sys; "
             "p = subprocess.run([sys.executable, '-m', 'pixellm', 'validate-data', 'custom', '--annotations', "
             f"'{tmp_path / 'ann.jsonl'}', '--image-root', '{tmp_path}'], capture_output=True, text=True); "
             "print(p.returncode); print(p.stdout); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120).stdout.splitlines()
    code, peak_kb = int(out[0]), int(out[-1])
    assert code == 1
    assert sum("is not finite" in line or "lies outside" in line for line in out) == 3
    assert peak_kb < 1.5e6, f"validate-data peaked at {peak_kb / 1e6:.2f} GB"


# ---------------------------------------------------------------- images and mask files


def test_an_exif_rotated_photo_is_read_upright_and_its_mask_aligns(tmp_path):
    """A phone stores the sensor's pixels and an orientation tag; annotators draw on the upright
    picture. Read with the tag applied, the mask covers the red block, and the header-only size
    (used by loaders) agrees."""
    upright = np.zeros((60, 40, 3), np.uint8)
    upright[10:20, 5:15] = (255, 0, 0)
    raw = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the sensor stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    raw.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    assert raw.size == (60, 40)
    image = np.asarray(read_image(tmp_path / "phone.jpg"))
    assert image.shape == (60, 40, 3) and image_size(tmp_path / "phone.jpg") == (60, 40)
    mask = decode_mask([box(5, 10, 15, 20)], 60, 40)
    assert image[mask, 0].mean() > 200 and image[~mask, 0].mean() < 30


def test_a_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert np.asarray(read_image(tmp_path / "deep.png"))[0, 0].tolist() == [117, 117, 117]  # 30000 / 257


def test_mask_files_palette_index_zero_is_background_and_alpha_only_masks_are_read(tmp_path):
    region = np.zeros((8, 8), bool)
    region[2:5, 3:7] = True
    palette = Image.fromarray(region.astype(np.uint8), mode="L").convert("P")
    palette.putpalette([255, 255, 255] + [0, 0, 0] * 255)  # index 0 drawn white, 1 black
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_mask(tmp_path / "palette.png"), region)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[region, 3] = 255  # a shape painted in the alpha channel only
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    assert np.array_equal(read_mask(tmp_path / "alpha.png"), region)
    grey = np.where(region, 200, 0).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert np.array_equal(decode_mask("grey.png", 8, 8, root=tmp_path), region)


def test_a_truncated_image_is_an_error_naming_the_file(tmp_path):
    from pixellm.data.images import ImageReadError

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "t.jpg") == (64, 64)  # the header still reads
    with pytest.raises(ImageReadError, match=r"t\.jpg does not decode"):
        read_image(tmp_path / "t.jpg")


# ---------------------------------------------------------------- user text


def test_a_literal_image_tag_in_a_question_is_stripped_and_codebook_tokens_are_refused(tiny_model):
    from pixellm.processor import PixelLMProcessor, UserTextError

    proc = PixelLMProcessor.from_model(tiny_model)
    plain, tagged = proc.encode("What is red?", "It <seg>."), proc.encode("<image>\nWhat is red?", "It <seg>.")
    assert tagged.input_ids.tolist() == plain.input_ids.tolist()
    assert int((tagged.input_ids == tiny_model.config.image_token_id).sum()) == tiny_model.config.num_image_tokens
    with pytest.raises(UserTextError, match=r"the answer contains the codebook token \[SEG0\]"):
        proc.encode("What is red?", "It [SEG0][SEG1][SEG2][SEG3][SEG4][SEG5].")
    with pytest.raises(UserTextError, match=r"the question contains the codebook token \[SEG3\]"):
        proc.encode_prompt("Where is [SEG3]?")
    with pytest.raises(UserTextError, match="the answer contains <image>"):
        proc.encode("What?", "A <image> here.")
