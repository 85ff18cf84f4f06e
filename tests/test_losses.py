import math

import torch
import torch.nn.functional as F

from pixellm.constants import IGNORE_INDEX
from pixellm.losses import dice_loss, mask_losses, refinement_weights, text_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_target_refinement_loss_hand_computed():
    # one question, two masks of 1x2 pixels
    m1 = torch.tensor([[[2.0, -1.0]]])
    m2 = torch.tensor([[[3.0, 1.0]]])
    logits = torch.cat([m1, m2])  # (2, 1, 2)
    target = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    # pixel 0: both predictions positive -> weight alpha = 2; pixel 1: only m2 positive -> 1
    w = refinement_weights(logits, alpha=2.0)
    assert w.tolist() == [[2.0, 1.0]]
    # BCE(x, t) = softplus(x) - x t
    bce_m1 = (2 * (softplus(2) - 2) + 1 * softplus(-1)) / 2
    bce_m2 = (2 * softplus(3) + 1 * (softplus(1) - 1)) / 2
    bce, _, n = mask_losses([logits], [target], alpha=2.0)
    assert n == 2
    assert bce.item() == pytest_approx((bce_m1 + bce_m2) / 2)


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-5)


def test_refinement_counts_overlaps_within_a_question_only():
    a = torch.tensor([[[5.0, 5.0]]])
    b = torch.tensor([[[5.0, 5.0]]])
    t = torch.ones(1, 1, 2)
    separate, _, _ = mask_losses([a, b], [t, t], alpha=10.0)  # two questions, one mask each
    together, _, _ = mask_losses([torch.cat([a, b])], [torch.cat([t, t])], alpha=10.0)
    plain = F.binary_cross_entropy_with_logits(a, t)
    assert separate.item() == pytest_approx(plain.item())
    assert together.item() == pytest_approx(10 * plain.item())


def test_refinement_weight_map_is_detached():
    logits = torch.randn(3, 4, 4, requires_grad=True)
    assert not refinement_weights(logits, 2.0).requires_grad


def test_targets_are_binarised():
    logits = torch.zeros(1, 2, 2)
    summed_parts = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])  # overlapping polygon parts summed to 2
    a, d, _ = mask_losses([logits], [summed_parts], alpha=2.0)
    b, e, _ = mask_losses([logits], [(summed_parts > 0).float()], alpha=2.0)
    assert a.item() == b.item() and d.item() == e.item()


def test_dice_hand_computed():
    logits = torch.tensor([[[0.0, 100.0]]])  # p = [0.5, 1]
    target = torch.tensor([[[1.0, 1.0]]])
    expected = 1 - (2 * 1.5 + 1) / (1.5 + 2 + 1)
    assert dice_loss(logits, target).item() == pytest_approx(expected)


def test_text_loss_scores_answer_positions_only():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11)
    hidden = torch.randn(2, 5, 8)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5], [IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX]])
    ref = F.cross_entropy(head(hidden[:, :-1]).reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert text_loss(hidden, labels, head).item() == pytest_approx(ref.item())


def test_no_masks_gives_zero_mask_losses():
    bce, dice, n = mask_losses([torch.zeros(0, 3, 3)], [torch.zeros(0, 3, 3)], alpha=2.0)
    assert n == 0 and bce.item() == 0 and dice.item() == 0
