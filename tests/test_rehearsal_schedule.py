"""The rehearsal's data.seed choice (pixellm/rehearsal/schedule.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pixellm.data.mixture import MixtureDataset
from pixellm.rehearsal.schedule import covers, draws, pick_seed


def records(*targets: int) -> list:
    return [SimpleNamespace(masks=[object()] * n) for n in targets]


SOURCES = [("vqa", records(0, 0, 0)), ("muse", records(1, 0, 15, 4)), ("refer", records(1, 2))]
WEIGHTS = [2.0, 4.0, 9.0]


def test_the_picked_seed_puts_text_only_beside_masks_and_the_longest_answer_into_the_steps():
    seed, plan = pick_seed(SOURCES, WEIGHTS, steps=3)
    assert covers(plan, 2, 15) and len(plan) == 6
    assert not any(covers(draws(SOURCES, WEIGHTS, s, 3), 2, 15) for s in range(seed))  # the first such seed
    mix = MixtureDataset([list(range(len(r))) for _, r in SOURCES], WEIGHTS, seed=seed)
    for i, d in enumerate(plan):  # what train.py's StepSampler reads at batch size 1 on 2 ranks
        assert (d.step, d.rank) == (i // 2 + 1, i % 2)
        source, record = mix.locate(i)
        assert (d.source, d.record, d.targets) == (SOURCES[source][0], record, len(SOURCES[source][1][record].masks))


def test_no_seed_is_an_error_that_says_what_was_wanted():
    with pytest.raises(ValueError, match="15-target sample"):
        pick_seed([("muse", records(1, 15))], [1.0], steps=3, tries=50)  # no text-only source at all
