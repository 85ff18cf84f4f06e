"""Which samples the rehearsal's few training steps see.

Two ranks at micro-batch 1 over 3 steps draw 6 samples of a 17-weight mixture, so by chance
they may never put a text-only micro-batch on one rank beside masks on the other (the case
that broke multi-GPU training) or reach the longest MUSE answer. The mixture order is a pure
function of `data.seed` (MixtureDataset.locate), so the rehearsal picks the first seed whose
first steps do both, from the records alone (no model, no image decoded).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.mixture import MixtureDataset
from ..data.records import QARecord


@dataclass(frozen=True)
class Draw:
    """One micro-batch of one rank: the source and record the mixture gives, its target count."""

    step: int
    rank: int
    source: str
    record: int
    targets: int

    def to_dict(self) -> dict:
        return {"step": self.step, "rank": self.rank, "source": self.source, "record": self.record,
                "targets": self.targets}


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def draws(sources: list[tuple[str, list[QARecord]]], weights: list[float], seed: int, steps: int,
          ranks: int = 2) -> list[Draw]:
    """The micro-batches (batch size 1) of `steps` steps on `ranks` ranks under `seed`."""
    mix = MixtureDataset([_Sized(len(records)) for _, records in sources], weights, seed=seed)
    out = []
    for i in range(steps * ranks):
        s, r = mix.locate(i)
        name, records = sources[s]
        out.append(Draw(i // ranks + 1, i % ranks, name, r, len(records[r].masks)))
    return out


def covers(plan: list[Draw], ranks: int, most_targets: int) -> bool:
    """Some step has a rank without targets beside a rank with targets, and some sample carries
    `most_targets` targets."""
    by_step = [plan[i : i + ranks] for i in range(0, len(plan), ranks)]
    mixed = any(min(d.targets for d in step) == 0 < max(d.targets for d in step) for step in by_step)
    return mixed and any(d.targets == most_targets for d in plan)


def pick_seed(sources: list[tuple[str, list[QARecord]]], weights: list[float], steps: int, ranks: int = 2,
              tries: int = 100_000) -> tuple[int, list[Draw]]:
    """The first data.seed whose first `steps` steps `cover` both cases; ValueError if none."""
    most = max(len(rec.masks) for _, records in sources for rec in records)
    for seed in range(tries):
        plan = draws(sources, weights, seed, steps, ranks)
        if covers(plan, ranks, most):
            return seed, plan
    raise ValueError(f"no data.seed below {tries} puts a text-only micro-batch beside one with masks and a "
                     f"{most}-target sample into {steps} steps of {ranks} ranks")
