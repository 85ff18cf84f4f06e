"""Metrics and the predictions contract, on tiny masks whose scores are computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixellm.evaluation.metrics import (
    Scorer,
    box_hit,
    box_iou,
    count_acc,
    mask_box,
    mask_iou,
    match_masks,
    score_questions,
)
from pixellm.evaluation.predictions import (
    PredictionsError,
    decode_prediction_masks,
    prediction_record,
    read_predictions,
    write_predictions,
)


def m(*rows: str) -> np.ndarray:
    """Mask from strings: '1' = foreground, '.' = background."""
    return np.array([[c == "1" for c in r] for r in rows], dtype=bool)


def row(width: int, cols: range) -> np.ndarray:
    """1 x width mask with `cols` set."""
    out = np.zeros((1, width), dtype=bool)
    out[0, list(cols)] = True
    return out


def test_mask_iou_2x2_and_empty():
    # pred top row, gt left column: overlap only (0,0) -> I=1, U=3
    assert mask_iou(m("11", ".."), m("1.", "1.")) == (1, 3)
    # empty vs empty: I=0, U=0 (scored as IoU 1 by the protocols)
    assert mask_iou(m("..", ".."), m("..", "..")) == (0, 0)
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(m("1"), m("11"))


def test_hungarian_beats_greedy():
    # 1x10 row. g0 = cols 0-5, g1 = cols 4-8, p0 = cols 2-6, p1 = cols 0-2.
    # IoU(p0,g0) = |2-5| / |0-6| = 4/7 ; IoU(p0,g1) = |4-6| / |2-8| = 3/7
    # IoU(p1,g0) = 3/6 = 1/2         ; IoU(p1,g1) = 0
    # greedy takes p0-g0 (4/7) then p1-g1 (0): total 0.571; optimum p0-g1 + p1-g0 = 13/14.
    g0, g1 = row(10, range(0, 6)), row(10, range(4, 9))
    p0, p1 = row(10, range(2, 7)), row(10, range(0, 3))
    assert match_masks([p0, p1], [g0, g1]) == [(0, 1), (1, 0)]
    res = score_questions("muse", {"q": [g0, g1]}, {"q": [p0, p1]})
    assert res["gIoU"] == pytest.approx((3 / 7 + 1 / 2) / 2)
    # cIoU = (3 + 3) / (7 + 6)
    assert res["cIoU"] == pytest.approx(6 / 13)


def test_match_masks_unmatched_and_deterministic():
    a, b = m("1.", ".."), m(".1", "..")
    # two identical predictions for one GT: one match, one unmatched pred, same answer each time
    first = match_masks([a, a.copy()], [a])
    assert first in ([(0, 0), (1, None)], [(1, 0), (0, None)])
    assert all(match_masks([a, a.copy()], [a]) == first for _ in range(5))
    assert match_masks([], [a, b]) == [(None, 0), (None, 1)]
    assert match_masks([a], []) == [(0, None)]


def test_muse_unmatched_prediction_and_gt():
    # q1 (4x4): g0 = rows 0-1 x cols 0-1 (4 px)
    #   p0 = rows 0-1 x cols 0-2 (6 px): I=4, U=6, IoU 2/3
    #   p1 = row 3 (4 px), unmatched prediction: IoU 0, U += 4
    q1_gt = [m("11..", "11..", "....", "....")]
    q1_pred = [m("111.", "111.", "....", "...."), m("....", "....", "....", "1111")]
    # q2 (4x4): g0 = col 3 (4 px), g1 = row 3 cols 0-1 (2 px)
    #   p0 = col 3 rows 0-1 (2 px): with g0 I=2, U=4, IoU 1/2; g1 unmatched: IoU 0, U += 2
    q2_gt = [m("...1", "...1", "...1", "...1"), m("....", "....", "....", "11..")]
    q2_pred = [m("...1", "...1", "....", "....")]
    res = score_questions("muse", {"q1": q1_gt, "q2": q2_gt}, {"q1": q1_pred, "q2": q2_pred})
    assert res["num_pairs"] == 4
    assert res["gIoU"] == pytest.approx((2 / 3 + 0 + 1 / 2 + 0) / 4)  # 7/24
    assert (res["intersection"], res["union"]) == (6, 16)
    assert res["cIoU"] == pytest.approx(6 / 16)
    # boxes: q1 (0,0,3,2) vs (0,0,2,2): 4/6 hit; q2 (3,0,4,2) vs (3,0,4,4): 2/4 = 0.5 hit
    assert res["box_P@0.5"] == pytest.approx(2 / 4)
    assert res["count_acc"] == 0.0  # 2 preds vs 1 GT, 1 pred vs 2 GT
    assert res["num_questions"] == 2


def test_empty_vs_empty_and_missing_prediction():
    gt = m("11", "11")
    # q_empty: no GT, no prediction -> one pair, IoU 1, I=U=0
    # q_half:  4 px GT, 2 px inside it -> IoU 1/2
    res = score_questions("muse", {"q_empty": [], "q_half": [gt]}, {"q_empty": [], "q_half": [m("11", "..")]})
    assert res["num_pairs"] == 2
    assert res["gIoU"] == pytest.approx(0.75)
    assert res["cIoU"] == pytest.approx(2 / 4)
    # only empty-vs-empty pairs: cIoU 0/0 is 1
    assert score_questions("muse", {"q": []}, {"q": []})["cIoU"] == 1.0
    # q_half has no prediction record: zero masks -> IoU 0, its area counts in the union
    res = score_questions("muse", {"q_empty": [], "q_half": [gt]}, {"q_empty": []})
    assert res["num_missing_predictions"] == 1
    assert res["gIoU"] == pytest.approx(0.5)
    assert (res["intersection"], res["union"]) == (0, 4)


def test_ignored_predictions_warn():
    gt = {"a": [m("1.")]}
    with pytest.warns(UserWarning, match="ignored 2 prediction"):
        res = score_questions("muse", gt, {"a": [m("1.")], "x": [], "y": []})
    assert res["num_ignored_predictions"] == 2
    assert res["gIoU"] == 1.0


def test_refer_protocol():
    g = m("11.", "11.", "...")
    # q1: first predicted mask is exact (IoU 1); the extra mask is not scored
    # q2: no prediction record -> empty mask: I=0, U=4
    res = score_questions("refer", {"q1": [g], "q2": [g]}, {"q1": [g, m("..1", "..1", "..1")]})
    assert res["num_pairs"] == 2
    assert res["gIoU"] == pytest.approx(0.5)
    assert (res["intersection"], res["union"]) == (4, 8)
    assert res["count_acc"] == 0.0


def test_grefcoco_nacc_tacc():
    g = m("11.", "11.", "...")
    gt = {"e1": [], "e2": [], "e3": [g], "e4": [g]}
    preds = {
        "e1": [],  # no target, predicted empty: TP, IoU 1, adds 0/0
        "e2": [m("111", "...", "...")],  # no target, 3 px predicted: FN, IoU 0, U += 3
        "e3": [],  # target, predicted empty: FP, I = 0, U = 4
        "e4": [m("11.", "...", "..."), m("...", "11.", "..1")],  # union 5 px, I=4: IoU 4/5
    }
    res = score_questions("grefcoco", gt, preds)
    assert res["N-acc"] == pytest.approx(1 / 2)
    assert res["T-acc"] == pytest.approx(1 / 2)
    assert res["num_no_target"] == 2
    assert res["gIoU"] == pytest.approx((1 + 0 + 0 + 0.8) / 4)
    assert (res["intersection"], res["union"]) == (4, 12)
    assert res["count_acc"] == pytest.approx(1 / 4)  # only e1 (0 vs 0)
    # boxes: e1 empty vs empty hit; e4 union box (0,0,3,3) vs (0,0,2,2): 4/9 < 0.5 miss
    assert res["box_P@0.5"] == pytest.approx(1 / 4)
    # target expressions only: e3 IoU 0 (I 0, U 4), e4 IoU 4/5 (I 4, U 5)
    assert res["gIoU_targets"] == pytest.approx(0.4)
    assert res["cIoU_targets"] == pytest.approx(4 / 9)


# A split of 3 questions without a target and 2 with one (3x3 masks). G1 = 4 px, G2 = 3 px.
G1 = m("11.", "11.", "...")
G2 = m("...", "...", "111")
MIXED_GT = {"n1": [], "n2": [], "n3": [], "t1": [G1], "t2": [G2]}
OLD_KEYS = {"protocol", "gIoU", "cIoU", "box_P@0.5", "count_acc", "num_questions", "num_pairs",
            "num_missing_predictions", "intersection", "union"}


@pytest.mark.parametrize("protocol", ["muse", "custom", "refer", "grefcoco"])
def test_model_without_masks_on_mixed_split(protocol):
    # no masks at all: n1-n3 are empty-vs-empty pairs (IoU 1), t1/t2 are IoU 0 (I 0, U 4 and 3)
    res = score_questions(protocol, MIXED_GT, {q: [] for q in MIXED_GT})
    assert res["gIoU"] == pytest.approx(3 / 5)  # overall, unchanged convention
    assert res["cIoU"] == 0.0 and res["union"] == 7
    assert res["gIoU_targets"] == 0.0 and res["cIoU_targets"] == 0.0
    assert res["N-acc"] == 1.0 and res["num_no_target"] == 3
    assert OLD_KEYS <= set(res)
    assert ("T-acc" in res) == (protocol == "grefcoco")  # T-acc stays gRefCOCO-only
    if protocol == "grefcoco":
        assert res["T-acc"] == 0.0


@pytest.mark.parametrize(("protocol", "giou"), [("muse", 3 / 5), ("grefcoco", 4 / 5)])
def test_mask_on_no_target_question_lowers_nacc(protocol, giou):
    preds = {
        "n1": [m("11.", "...", "...")],  # a 2 px mask where there is nothing: an N-acc miss
        "n2": [m("...", "...", "...")],  # only an empty mask: counts as "no mask" for N-acc
        "n3": [],
        "t1": [G1],
        "t2": [G2],
    }
    res = score_questions(protocol, MIXED_GT, preds)
    assert res["N-acc"] == pytest.approx(2 / 3) and res["num_no_target"] == 3
    assert res["gIoU_targets"] == 1.0 and res["cIoU_targets"] == 1.0
    # overall pairs: n1 IoU 0 (U 2); n2 is an unmatched (IoU 0) prediction for muse but the
    # empty union vs empty GT (IoU 1) for grefcoco; n3, t1, t2 IoU 1
    assert res["gIoU"] == pytest.approx(giou)
    assert (res["intersection"], res["union"]) == (7, 9)
    if protocol == "grefcoco":
        assert res["T-acc"] == 1.0


def test_giou_targets_counts_unmatched_predictions_for_muse():
    extra = m("...", "...", "11.")  # 2 px, overlaps no GT
    gt = {"n": [], "t": [G1]}
    preds = {"n": [], "t": [G1, extra]}
    # muse: t gives G1 vs G1 (IoU 1, I 4, U 4) and the unmatched extra (IoU 0, U 2); n IoU 1
    res = score_questions("muse", gt, preds)
    assert res["gIoU"] == pytest.approx(2 / 3)
    assert res["gIoU_targets"] == pytest.approx(1 / 2)
    assert res["cIoU_targets"] == pytest.approx(4 / 6)
    assert res["N-acc"] == 1.0
    # refer scores target j against mask j only: the extra mask is not a pair
    res = score_questions("refer", gt, preds)
    assert res["gIoU_targets"] == 1.0 and res["gIoU"] == 1.0


def test_split_specific_figures_are_none_without_their_questions():
    # only target questions: N-acc None, and gIoU_targets equals gIoU (the RefCOCO case)
    res = score_questions("refer", {"a": [G1], "b": [G2]}, {"a": [G1], "b": [m("...", "...", "1..")]})
    assert res["N-acc"] is None and res["num_no_target"] == 0
    assert res["gIoU"] == res["gIoU_targets"] == pytest.approx((1 + 1 / 3) / 2)
    assert res["cIoU"] == res["cIoU_targets"] == pytest.approx(5 / 7)
    # only no-target questions: no target figures; T-acc None on gRefCOCO
    res = score_questions("grefcoco", {"a": [], "b": []}, {"a": [], "b": [G1]})
    assert res["gIoU_targets"] is None and res["cIoU_targets"] is None and res["T-acc"] is None
    assert res["N-acc"] == pytest.approx(1 / 2) and res["gIoU"] == pytest.approx(1 / 2)
    # an empty GT mask (gRefCOCO's no-target form) is no target either
    res = score_questions("grefcoco", {"a": [m("...", "...", "...")]}, {"a": []})
    assert (res["num_no_target"], res["N-acc"], res["gIoU"], res["gIoU_targets"]) == (1, 1.0, 1.0, None)


def test_box_precision_helpers():
    assert mask_box(m("...", ".1.", ".11")) == (1, 1, 3, 3)
    assert mask_box(m("..", "..")) is None
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(2 / 6)
    # exactly 0.5: (0,0,2,2) inside (0,0,2,4) -> 4/8
    assert box_hit(m("11", "11", "..", ".."), m("1.", "..", "..", ".1"))
    # scattered pixels with a small pixel IoU but the same box: box hit
    assert box_hit(m("1..", "...", "..1"), m("..1", "...", "1.."))
    assert not box_hit(m("..", ".."), m("1.", ".."))  # empty prediction has no box
    assert box_hit(m("..", ".."), m("..", ".."))


def test_count_acc():
    assert count_acc([1, 2, 0], [1, 1, 0]) == pytest.approx(2 / 3)
    assert count_acc([], []) is None
    s = Scorer("custom")
    s.add([m("1.")], None)
    s.add([m("1."), m(".1")], [m("1."), m(".1")])
    assert s.result()["count_acc"] == pytest.approx(1 / 2)


def test_predictions_round_trip(tmp_path):
    a, b = m("1..", ".11"), m("...", "1..")
    recs = [
        prediction_record(3, "0:0", "The cat [SEG0]...", [a, b], [0.9, 0.5]),
        prediction_record(4, 12, "no object", []),
    ]
    path = tmp_path / "preds.jsonl"
    assert write_predictions(path, recs) == 2
    got = read_predictions(path)
    assert sorted(got) == ["0:0", "12"]  # int question ids are read as strings
    masks = decode_prediction_masks(got["0:0"], 2, 3)
    assert [x.tolist() for x in masks] == [a.tolist(), b.tolist()]
    assert got["0:0"]["scores"] == [0.9, 0.5] and got["12"]["masks"] == []
    assert isinstance(got["0:0"]["masks"][0]["counts"], str)
    with pytest.raises(PredictionsError, match="differs from the image size"):
        decode_prediction_masks(got["0:0"], 3, 3)


def test_bad_prediction_lines_reported(tmp_path):
    good = prediction_record(1, "a", "x", [m("1.")])
    lines = [
        json.dumps(good),
        "{not json",
        "",
        json.dumps({"question_id": "b"}),
        json.dumps(good),
        json.dumps({**good, "question_id": "c", "scores": [1, 2]}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PredictionsError) as err:
        read_predictions(path)
    text = str(err.value)
    assert f"{path}: line 2: not valid JSON" in text
    assert "line 4: 'masks' is missing" in text
    assert "line 5: duplicate question_id 'a' (first on line 1)" in text
    assert "line 6: 1 masks but 2 scores" in text
    assert len(err.value.problems) == 4
    with pytest.raises(PredictionsError, match="not found"):
        read_predictions(tmp_path / "missing.jsonl")
    with pytest.raises(PredictionsError, match="duplicate"):
        write_predictions(tmp_path / "dup.jsonl", [good, good])
