"""Joint VQA + grounding evaluation (PixMMVP-style): the answer rule, the scores and the 2x2
table counted by hand on 4x4 masks, the loader's errors, and evaluate.py / `pixellm score joint`
end to end with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixellm.data.errors import DataError
from pixellm.data.joint import MC_INSTRUCTION, load_joint, validate_joint
from pixellm.data.masks import encode_rle
from pixellm.evaluation.joint import JointItem, answer_is_right, normalize_answer, score_joint


def mask(*cells: tuple[int, int], fill: tuple[slice, slice] | None = None) -> np.ndarray:
    """A 4x4 bool mask with the given (row, col) cells, or the `fill` block, set."""
    m = np.zeros((4, 4), bool)
    if fill is not None:
        m[fill] = True
    for r, c in cells:
        m[r, c] = True
    return m


def test_answer_rule():
    mc = ("open", "closed")
    assert answer_is_right("B", mc, "B") and answer_is_right("(B) closed", mc, "B")
    assert answer_is_right("I think B.", mc, "B")  # "I" is not an option letter of 2 choices
    assert answer_is_right(" Closed!", mc, "B") and answer_is_right("the closed", mc, "B")  # the choice's text
    assert not answer_is_right("A", mc, "B") and not answer_is_right("A closed one", mc, "B")  # "A" is read first
    assert not answer_is_right("closed, not open", mc, "B")  # no letter, and not the choice's text
    assert normalize_answer("The wing's OPEN. <seg>") == "wings open"
    assert answer_is_right("the left", None, "Left") and answer_is_right("On the left side.", None, "left")
    assert not answer_is_right("concatenate", None, "cat") and not answer_is_right("", None, "cat")


def test_scores_and_the_table_are_counted_by_hand():
    items = [
        # 1. multiple choice, letter right. GT rows 0-1 (8 px), prediction rows 0-1 cols 0-2 (6 px):
        #    I 6, U 8, IoU 0.75 -> grounded. right_grounded
        JointItem(("open", "closed"), "B", mask(fill=(slice(0, 2), slice(None))), "B",
                  [mask(fill=(slice(0, 2), slice(0, 3)))]),
        # 2. multiple choice, the choice's text right ("Green." has no standalone capital). GT the
        #    2x2 top-left block (4 px); predictions (0,0) and (3,3), union 2 px: I 1, U 5, IoU 0.2.
        #    right_not_grounded
        JointItem(("red", "blue", "green"), "C", mask(fill=(slice(0, 2), slice(0, 2))), "Green.",
                  [mask((0, 0)), mask((3, 3))]),
        # 3. short answer, reference as whole words. GT column 0 (4 px), prediction columns 0-1
        #    (8 px): I 4, U 8, IoU 0.5 (= the threshold) -> grounded. right_grounded
        JointItem(None, "two", mask(fill=(slice(None), slice(0, 1))), "There are two cats",
                  [mask(fill=(slice(None), slice(0, 2)))]),
        # 4. multiple choice, wrong letter ("B. no" vs A = "yes"). GT and prediction the whole image:
        #    I 16, U 16, IoU 1. wrong_grounded
        JointItem(("yes", "no"), "A", mask(fill=(slice(None), slice(None))), "B. no",
                  [mask(fill=(slice(None), slice(None)))]),
        # 5. no prediction record: a wrong answer, no mask. GT (2,2): I 0, U 1, IoU 0. wrong_not_grounded
        JointItem(None, "left", mask((2, 2)), None, None),
        # 6. short answer, "cat" inside a word is not the reference; no mask. GT (0,3), (1,3):
        #    I 0, U 2, IoU 0. wrong_not_grounded
        JointItem(None, "cat", mask((0, 3), (1, 3)), "concatenate", []),
    ]
    out = score_joint(items)
    assert out["answer_acc"] == pytest.approx(3 / 6)  # items 1, 2, 3
    assert out["gIoU"] == pytest.approx((0.75 + 0.2 + 0.5 + 1 + 0 + 0) / 6)
    assert out["cIoU"] == pytest.approx((6 + 1 + 4 + 16 + 0 + 0) / (8 + 5 + 8 + 16 + 1 + 2))  # 27 / 40
    assert out["grounded_acc"] == pytest.approx(3 / 6)  # items 1, 3, 4
    assert out["table"] == {"right_grounded": 2, "right_not_grounded": 1, "wrong_grounded": 1, "wrong_not_grounded": 2}
    assert out["table_fractions"] == {"right_grounded": pytest.approx(2 / 6), "right_not_grounded": pytest.approx(1 / 6),
                                      "wrong_grounded": pytest.approx(1 / 6), "wrong_not_grounded": pytest.approx(2 / 6)}
    assert out["num_questions"] == 6 and out["num_missing_predictions"] == 1
    assert (out["protocol"], out["per"], out["empty_pair_iou"], out["grounded_threshold"]) == ("joint", "question", 1, 0.5)
    json.dumps(out)  # JSON-able
    empty = score_joint([])
    assert empty["answer_acc"] is None and empty["table_fractions"]["right_grounded"] is None


def write_items(folder: Path, items: list) -> Path:
    """Two 6x8 images, a PNG mask, and `items` (dicts or raw lines) as joint.jsonl in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    Image.new("RGB", (8, 6), (90, 120, 150)).save(folder / "img" / "a.png")
    Image.new("RGB", (8, 6), (20, 200, 50)).save(folder / "img" / "b.png")
    png = np.zeros((6, 8), np.uint8)
    png[2:5, 3:7] = 255
    Image.fromarray(png).save(folder / "b_mask.png")
    lines = [x if isinstance(x, str) else json.dumps(x) for x in items]
    path = folder / "joint.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def good_items() -> list[dict]:
    rle = encode_rle(np.pad(np.ones((3, 4), bool), ((0, 3), (0, 4))))  # 6x8, the top-left 3x4 block
    return [
        {"image": "img/a.png", "question": "Is the butterfly's wing open or closed?", "choices": ["open", "closed"],
         "answer": "B", "object": "the butterfly's wing", "mask": rle},
        {"image": "img/b.png", "question": "What colour is the box?", "answer": "green", "object": "the box",
         "mask": "b_mask.png", "id": "q7"},
    ]


def test_loader_builds_the_prompts_and_ids(tmp_path):
    records = load_joint(write_items(tmp_path, good_items()), tmp_path)
    mc, short = records
    assert mc.question == ("Is the butterfly's wing open or closed?\nA. open\nB. closed\n" + MC_INSTRUCTION)
    assert mc.extra["grounding_prompt"] == "Segment: the butterfly's wing" and mc.extra["answer"] == "B"
    assert mc.extra["answer_text"] == "closed" and mc.question_id == "0" and mc.phrases == ["the butterfly's wing"]
    assert short.question == "What colour is the box?" and short.extra["choices"] is None
    assert short.question_id == "q7" and short.extra["answer"] == "green" and (short.height, short.width) == (6, 8)
    assert validate_joint(tmp_path / "joint.jsonl", tmp_path) == []


@pytest.mark.parametrize("change, line, reason", [
    (lambda items: items[1].update(choices=["red", "green"], answer="C"), 2, "unknown answer 'C'"),
    (lambda items: items[1].pop("object"), 2, "'object' must be a non-empty string"),
    (lambda items: items.insert(1, '{"image": "img/a.png", "question": '), 2, "invalid JSON"),
    (lambda items: items[0].update(choices="open or closed"), 1, "'choices' must be a list of non-empty strings"),
    (lambda items: items[1].update(image="img/missing.png"), 2, "not found"),
    (lambda items: items[1].update(mask={"size": [6, 8], "counts": [1, 2]}), 2, "mask: RLE counts sum to 3"),
    (lambda items: items[1].update(id="0"), 2, "duplicate id '0' (first on line 1)"),
])
def test_loader_errors_name_the_file_and_line(tmp_path, change, line, reason):
    items = good_items()
    change(items)
    path = write_items(tmp_path, items)
    with pytest.raises(DataError) as err:
        load_joint(path, tmp_path)
    assert str(err.value).startswith(f"{path}: line {line}: ") and reason in str(err.value)
    problems = validate_joint(path, tmp_path)
    assert [(p.file, p.where) for p in problems] == [(str(path), f"line {line}")] and reason in problems[0].reason


def test_validate_lists_every_problem(tmp_path):
    items = good_items()
    items[0].update(answer="Z")
    items[1].update(mask="missing.png", question="")
    path = write_items(tmp_path, [*items, "[1, 2]"])
    wheres = [(p.where, p.reason.split(":")[0]) for p in validate_joint(path, tmp_path)]
    assert [w for w, _ in wheres] == ["line 1", "line 2", "line 3"]
    assert "unknown answer 'Z'" in wheres[0][1] and "'question'" in wheres[1][1] and "JSON object" in wheres[2][1]


def test_evaluate_py_and_score_joint_end_to_end_with_a_tiny_model(tmp_path, capsys):
    from conftest import build_tiny

    import evaluate
    from pixellm.cli import main as cli_main

    build_tiny(seed=2).save_pretrained(tmp_path / "model")
    path = write_items(tmp_path / "data", good_items())
    results = evaluate.main([str(tmp_path / "model"), "--dataset", f"joint:{path}", "--out", str(tmp_path / "eval"),
                             "eval.max_new_tokens=8"])
    folder = tmp_path / "eval" / "joint_joint"
    metrics = json.loads((folder / "metrics.json").read_text())
    attention = json.loads((folder / "attention.json").read_text())
    assert {**metrics, "attention": attention} == results["joint:joint"]
    # the object's words are found in the answer that names it, and their attention is scored
    assert attention["num_targets"] == 2 and 0 <= attention["point_acc"] <= 1 and 0 < attention["chance_point_acc"] < 1
    assert {"answer_acc", "gIoU", "cIoU", "grounded_acc", "grounded_threshold", "table", "table_fractions",
            "num_questions", "num_missing_predictions", "protocol", "empty_pair_iou", "per"} <= set(metrics)
    assert metrics["num_questions"] == 2 and metrics["num_missing_predictions"] == 0
    assert sum(metrics["table"].values()) == 2 and metrics["protocol"] == "joint"
    records = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in records] == ["0", "q7"]
    assert all({"text", "masks", "scores", "vqa_text"} <= set(r) for r in records)
    capsys.readouterr()
    code = cli_main(["score", "joint", "--annotations", str(path), "--image-root", str(path.parent),
                     "--predictions", str(folder / "predictions.jsonl")])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == metrics
