"""Datasets over QARecords, the seeded training mixture and a resumable per-rank sampler."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Dataset, Sampler

from .batch import Sample
from .errors import DataError
from .records import QARecord
from .skips import skip_entry

log = logging.getLogger(__name__)


class QADataset(Dataset):
    """QARecords through the processor. A record that cannot be used (bad image or mask, too
    long even with targets dropped, the model's tokens in its text) is replaced by the next
    usable one, and each replaced record is put in the returned sample's `extra["skipped"]`
    (skips.skip_entry dicts: file, where, reason) so the training loop writes it to
    skipped.jsonl and counts it."""

    def __init__(self, records: list[QARecord], processor, name: str = "") -> None:
        if not records:
            raise DataError(f"dataset {name or '?'} has no records")
        self.records, self.processor, self.name = records, processor, name

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        skipped = []
        for offset in range(min(len(self.records), 100)):
            record = self.records[(index + offset) % len(self.records)]
            try:
                sample = self.processor(record)
            except DataError as e:
                skipped.append(skip_entry(e, source=self.name, stage="train", question_id=record.question_id))
                continue
            sample.extra["skipped"] = skipped
            sample.extra["source"] = self.name
            return sample
        first = skipped[0]
        raise DataError(f"{self.name}: 100 consecutive records could not be used; the first: "
                        f"{first['file']}: {first['where']}: {first['reason']}")


class MixtureDataset(Dataset):
    """Sample i of the mixture is a pure function of (seed, i): which source (by weight), then
    which record. Reproducible, and resuming at step s needs no replay of earlier steps."""

    def __init__(self, datasets: list[QADataset], weights: list[float], seed: int = 0) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
        self.datasets, self.probs, self.seed = datasets, w / w.sum(), seed

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def locate(self, index: int) -> tuple[int, int]:
        """Global sample index -> (source index, record index)."""
        rng = np.random.default_rng([self.seed, index])
        source = int(rng.choice(len(self.datasets), p=self.probs))
        return source, int(rng.integers(len(self.datasets[source])))

    def __getitem__(self, index: int) -> Sample:
        source, record = self.locate(index)
        return self.datasets[source][record]

    def describe(self) -> str:
        return ", ".join(f"{d.name}: {len(d)} records, p={p:.3f}" for d, p in zip(self.datasets, self.probs))


class StepSampler(Sampler[int]):
    """Endless global sample indices for one rank: micro-step m of rank r reads samples
    [(m * world + r) * B, ... + B). Starting at `start_step` resumes the exact data order."""

    def __init__(self, *, batch_size: int, rank: int = 0, world_size: int = 1, start_step: int = 0) -> None:
        self.batch_size, self.rank, self.world, self.start = batch_size, rank, world_size, start_step

    def __iter__(self) -> Iterator[int]:
        step = self.start
        while True:
            first = (step * self.world + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)
            step += 1
