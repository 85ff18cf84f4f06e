"""Custom JSON Lines format: load_custom end to end and validate_custom's problem reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pixellm.constants import NO_TARGET_ANSWER
from pixellm.data.custom import load_custom, validate_custom
from pixellm.data.errors import DataError
from pixellm.data.masks import decode_mask, encode_rle

H, W = 12, 16


def _write_image(path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def _write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture
def dataset(tmp_path):
    """Two images; masks as compressed RLE, uncompressed RLE, polygon and PNG."""
    _write_image(tmp_path / "img" / "a.png")
    _write_image(tmp_path / "img" / "b.jpg", h=20, w=10)
    rle_mask = np.zeros((H, W), bool)
    rle_mask[2:5, 3:9] = True
    png_mask = np.zeros((20, 10), np.uint8)
    png_mask[10:, :4] = 255
    Image.fromarray(png_mask).save(tmp_path / "img" / "b_mask.png")
    uncompressed = {"size": [H, W], "counts": [W * H - 1, 1]}  # last pixel (column-major)
    lines = [
        {"image": "img/a.png", "conversations": [
            {"question": "Where is the box?", "answer": "The box <seg> and the dot <seg>.",
             "masks": [encode_rle(rle_mask), uncompressed], "phrases": ["box", "dot"]},
            {"question": "Where is the polygon?", "answer": "Here <seg>.",
             "masks": [[[0, 0, 4, 0, 4, 4, 0, 4]]]},
        ]},
        "",  # blank lines are skipped but counted
        {"image": "img/b.jpg", "image_id": "bee", "conversations": [
            {"question": "And the png?", "answer": "It is <seg>.", "masks": ["img/b_mask.png"]},
            {"question": "Is there a cat?", "answer": NO_TARGET_ANSWER},
        ]},
    ]
    return _write_jsonl(tmp_path / "data.jsonl", lines), tmp_path, rle_mask, png_mask > 0


def test_load_custom_end_to_end(dataset):
    path, root, rle_mask, png_mask = dataset
    records = load_custom(path, root)
    assert [r.question_id for r in records] == ["1:0", "1:1", "3:0", "3:1"]
    assert [r.image_id for r in records] == [1, 1, "bee", "bee"]
    assert all(r.source == "custom" for r in records)
    a0, a1, b0, b1 = records
    assert (a0.height, a0.width) == (H, W) and (b0.height, b0.width) == (20, 10)
    assert a0.image_path == root / "img" / "a.png" and a0.phrases == ["box", "dot"]
    assert a0.num_targets == 2 and b1.num_targets == 0 and b1.answer == NO_TARGET_ANSWER

    decoded = [decode_mask(m, r.height, r.width, root=r.mask_root) for r in records for m in r.masks]
    assert np.array_equal(decoded[0], rle_mask)
    assert decoded[1].sum() == 1 and decoded[1][H - 1, W - 1]
    assert decoded[2][1:4, 1:4].all() and not decoded[2][6:, 6:].any()
    assert np.array_equal(decoded[3], png_mask)
    assert validate_custom(path, root) == []


def test_load_custom_source_name(dataset):
    path, root, *_ = dataset
    assert {r.source for r in load_custom(path, root, source="mine")} == {"mine"}


def test_load_custom_raises_with_line(tmp_path):
    _write_image(tmp_path / "a.png")
    ok = {"image": "a.png", "conversations": [{"question": "q", "answer": "a"}]}
    bad = {"image": "a.png", "conversations": [{"question": "q", "answer": "one <seg>", "masks": []}]}
    path = _write_jsonl(tmp_path / "d.jsonl", [ok, bad])
    with pytest.raises(DataError, match=r"d\.jsonl: line 2, conversation 0: the answer has 1 <seg> but there are 0 masks"):
        load_custom(path, tmp_path)


def test_load_custom_missing_image(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"image": "nope.png", "conversations": [{"question": "q", "answer": "a"}]}])
    with pytest.raises(DataError, match="line 1: image .*nope.png not found"):
        load_custom(path, tmp_path)


def test_load_custom_empty_file(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        load_custom(tmp_path / "d.jsonl", tmp_path)


def test_validate_custom_reports_every_fault(tmp_path):
    _write_image(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "small_mask.png")
    good_rle = encode_rle(np.ones((H, W), bool))

    def rec(answer, masks, image="a.png"):
        return {"image": image, "conversations": [{"question": "q?", "answer": answer, "masks": masks}]}

    lines = [
        rec("ok <seg>", [good_rle]),                                           # 1 fine
        '{"image": "a.png", "conversations": [',                               # 2 bad JSON
        rec("two <seg> <seg>", [good_rle]),                                    # 3 count mismatch
        rec("x <seg>", [good_rle], image="missing.png"),                      # 4 missing image
        rec("x <seg>", [{"size": [H + 1, W], "counts": good_rle["counts"]}]),  # 5 wrong-size RLE
        {"image": "a.png", "conversations": [                                  # 6 undecodable RLE
            {"question": "q", "answer": "fine"},
            {"question": "q", "answer": "a <seg>", "masks": [{"size": [H, W], "counts": "\x7f\x7f!!garbage"}]}]},
        rec("x <seg>", ["small_mask.png"]),                                    # 7 wrong-size PNG
        rec("x <seg>", [good_rle], image="broken.png"),                       # 8 undecodable image
        {"conversations": "nope"},                                             # 9 keys and types
        "[1, 2]",                                                              # 10 not an object
        rec("x <seg>", [7]),                                                   # 11 bad mask type
    ]
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    problems = validate_custom(path, tmp_path)
    by_where = {}
    for p in problems:
        assert p.file == str(path)
        by_where.setdefault(p.where, []).append(p.reason)
    text = "\n".join(map(str, problems))
    assert "line 1" not in by_where, text
    assert "invalid JSON at column" in by_where["line 2"][0]
    assert "2 <seg> but there are 1 masks" in by_where["line 3, conversation 0"][0]
    assert "missing.png not found" in by_where["line 4"][0]
    assert "differs from the image size" in by_where["line 5, conversation 0, mask 0"][0]
    assert by_where["line 6, conversation 1, mask 0"]  # corrupt counts
    assert "line 6, conversation 0, mask 0" not in by_where
    assert "is 5x5, the image is 16x12" in by_where["line 7, conversation 0, mask 0"][0]
    assert "does not decode" in by_where["line 8"][0]
    reasons9 = " ".join(by_where["line 9"])
    assert "'image'" in reasons9 and "'conversations'" in reasons9
    assert "JSON object" in by_where["line 10"][0]
    assert "got int" in by_where["line 11, conversation 0, mask 0"][0]
    assert str(problems[0]).startswith(f"{path}: line 2: ")


def test_validate_custom_empty_and_missing(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    assert [p.reason for p in validate_custom(tmp_path / "e.jsonl", tmp_path)] == ["no records (the file is empty)"]
    assert validate_custom(tmp_path / "none.jsonl", tmp_path)[0].reason == "not found"


def test_validate_custom_phrases(tmp_path):
    _write_image(tmp_path / "a.png")
    rle = encode_rle(np.ones((H, W), bool))
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"image": "a.png", "conversations": [{"question": "q", "answer": "a <seg>", "masks": [rle], "phrases": ["a", "b"]}]},
    ])
    assert [(p.where, p.reason) for p in validate_custom(path, tmp_path)] == [("line 1, conversation 0", "2 phrases for 1 masks")]
