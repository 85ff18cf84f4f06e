"""The averaging unit ("per") of REFER-family scores, and gRefCOCO scored as ReLA's evaluator does."""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import pytest
from test_data_refer import MASKS, refer_root  # noqa: F401  (refer_root is a fixture)

from pixellm.config import load_config
from pixellm.data.skips import SkipLog
from pixellm.evaluation.datasets import parse_dataset
from pixellm.evaluation.metrics import score_questions
from pixellm.evaluation.predictions import prediction_record, write_predictions
from pixellm.evaluation.score import register

# refcoco "train" in the fixture: object 0 has expressions 10 and 11, object 1 has 12, object 2 has 13.
# Predictions: 10 and 12 exact (IoU 1), 11 and 13 empty (IoU 0).
#   per expression: 4 questions, gIoU (1 + 0 + 1 + 0) / 4 = 0.5
#   per instance:   the first expression of each object (10, 12, 13): gIoU (1 + 1 + 0) / 3
EMPTY = np.zeros_like(MASKS[1])


def score_cli(root, preds, *extra):
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(["score", "refer", "--root", str(root), "--name", "refcoco", "--split-by", "unc",
                         "--split", "train", "--predictions", str(preds), *extra])
    return args.func(args)


@pytest.fixture
def refer_preds(refer_root, tmp_path):  # noqa: F811
    path = tmp_path / "preds.jsonl"
    write_predictions(path, [prediction_record(100, "10", "", [MASKS[1]]), prediction_record(100, "11", "", [EMPTY]),
                             prediction_record(100, "12", "", [MASKS[2]]), prediction_record(100, "13", "", [EMPTY])])
    return refer_root, path


@pytest.mark.parametrize(("flags", "per", "giou", "questions"), [
    ((), "expression", 0.5, 4), (("--per", "expression"), "expression", 0.5, 4), (("--per", "instance"), "instance", 2 / 3, 3),
])
def test_refer_scores_per_expression_or_per_instance(refer_preds, capsys, flags, per, giou, questions):
    root, preds = refer_preds
    assert score_cli(root, preds, *flags) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["per"] == per and res["num_questions"] == questions
    assert res["gIoU"] == pytest.approx(giou)
    assert res["num_ignored_predictions"] == 0  # expression 11's prediction is expected, not foreign
    assert res.get("num_unscored_expressions") == (1 if per == "instance" else None)


def test_per_is_refused_outside_the_refer_protocol(tmp_path, capsys):
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(["score", "muse", "--annotations", "a.json", "--image-root", str(tmp_path),
                         "--predictions", "p.jsonl", "--per", "instance"])
    with pytest.raises(SystemExit) as exc:
        args.func(args)
    assert exc.value.code == 2 and "--per is for the refer protocol" in capsys.readouterr().err


def test_every_protocol_states_its_unit():
    assert score_questions("muse", {"a": []}, {})["protocol"] == "muse"  # the in-memory scorer has no unit
    from pixellm.evaluation.units import DEFAULT_PER, check_per

    assert set(DEFAULT_PER) == {"refer", "grefcoco", "muse", "custom", "reasonseg", "joint"}
    check_per("reasonseg", "query")
    with pytest.raises(ValueError, match="not a unit of the grefcoco protocol"):
        check_per("grefcoco", "instance")


def test_evaluate_runs_only_the_first_expression_per_instance(refer_root):  # noqa: F811
    import evaluate

    cfg = load_config(None)
    data_root = str(refer_root.parent)
    ds = parse_dataset("refcoco:train", data_root=data_root, per="instance")
    assert ds.per == "instance" and parse_dataset("muse:val", per="instance").per is None
    records = evaluate.load_split(ds, cfg, SkipLog(None))
    assert [r.question_id for r in records] == ["10", "12", "13"]
    every = evaluate.load_split(parse_dataset("refcoco:train", data_root=data_root), cfg, SkipLog(None))
    assert [r.question_id for r in every] == ["10", "11", "12", "13"]
    assert evaluate.parse_args(["m", "--dataset", "refcoco:val", "--per", "instance"]).per == "instance"


def rela_scores(samples: list[tuple[np.ndarray, bool, np.ndarray, bool]]) -> dict:
    """ReLA's GRES evaluator (gres_model/evaluation/refer_evaluation.py), restated from its rules:
    each sample is (GT mask, GT says no target, predicted mask, prediction says no target).
    No-target GT: predicted no-target is TP (IoU 1, adds 0 / 0), else FN (IoU 0, adds the
    prediction's area to the union). Target GT: predicted no-target is FP (intersection zeroed),
    else TN; IoU = I / U. gIoU = mean IoU, cIoU = sum I / sum U, N-acc = TP / (TP + FN),
    T-acc = TN / (TN + FP), Pr@X over target samples."""
    tp = fn = fp = tn = 0
    i_sum = u_sum = iou_sum = 0.0
    target_ious = []
    for gt, gt_nt, pred, pred_nt in samples:
        inter, union = int((gt & pred).sum()), int((gt | pred).sum())
        if gt_nt:
            if pred_nt:
                tp, iou_sum = tp + 1, iou_sum + 1
            else:
                fn, u_sum = fn + 1, u_sum + union
            continue
        if pred_nt:
            fp, inter = fp + 1, 0
        else:
            tn += 1
        iou = 0.0 if union == 0 else inter / union
        iou_sum, i_sum, u_sum = iou_sum + iou, i_sum + inter, u_sum + union
        target_ious.append(iou)
    out = {"gIoU": iou_sum / len(samples), "cIoU": i_sum / u_sum, "N-acc": tp / (tp + fn), "T-acc": tn / (tn + fp)}
    out.update({f"Pr@{t}": sum(x >= t for x in target_ious) / len(target_ious) for t in (0.7, 0.8, 0.9)})
    return out


def test_grefcoco_scores_equal_relas_evaluator_on_random_expressions():
    rng = np.random.default_rng(0)
    rand = random.Random(0)
    gts, preds, samples = {}, {}, []
    for k in range(300):
        shape = (6, 7)
        gt_masks = [rng.random(shape) < rng.uniform(0.1, 0.6) for _ in range(rand.choice([0, 0, 1, 2, 3]))]
        kind = rand.random()  # what the model answers: nothing, an empty mask, a guess, or near the truth
        if kind < 0.25:
            pred_masks = []
        elif kind < 0.35:
            pred_masks = [np.zeros(shape, bool)]
        elif kind < 0.6 or not gt_masks:
            pred_masks = [rng.random(shape) < 0.3 for _ in range(rand.choice([1, 2]))]
        else:
            pred_masks = [g ^ (rng.random(shape) < 0.08) for g in gt_masks]
        gt_union = np.logical_or.reduce(gt_masks) if gt_masks else np.zeros(shape, bool)
        pred_union = np.logical_or.reduce(pred_masks) if pred_masks else np.zeros(shape, bool)
        # ReLA's "no target" on both sides is what our masks say: nothing (or only empty masks)
        samples.append((gt_union, not gt_union.any(), pred_union, not pred_union.any()))
        gts[str(k)], preds[str(k)] = gt_masks, pred_masks
    ours = score_questions("grefcoco", gts, preds)
    ref = rela_scores(samples)
    assert 60 < ours["num_no_target"] < 180  # both kinds of expression are well represented
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value), key


def test_grefcoco_precision_at_thresholds_by_hand():
    g = np.zeros((1, 10), bool)
    g[0, :10] = True
    near = g.copy()
    near[0, 9] = False  # IoU 0.9
    mid = g.copy()
    mid[0, 7:] = False  # IoU 0.7
    res = score_questions("grefcoco", {"a": [g], "b": [g], "c": [g], "n": []},
                          {"a": [near], "b": [mid], "c": [], "n": []})
    # target expressions a (0.9), b (0.7), c (0): Pr@0.7 2/3, Pr@0.8 1/3, Pr@0.9 1/3; n is not counted
    assert (res["Pr@0.7"], res["Pr@0.8"], res["Pr@0.9"]) == pytest.approx((2 / 3, 1 / 3, 1 / 3))
    assert "Pr@0.7" not in score_questions("refer", {"a": [g]}, {"a": [near]})
