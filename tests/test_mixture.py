"""The training mixture: seeded determinism, source weights, the resumable per-rank sampler,
skipped records, and the synthetic source's generate-once stamp."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pixellm.config import DataConfig, SourceConfig, SyntheticSettings
from pixellm.data import sources, synthetic
from pixellm.data.errors import DataError
from pixellm.data.mixture import MixtureDataset, QADataset, StepSampler
from pixellm.data.records import QARecord
from pixellm.processor import PixelLMProcessor


def make_records(name: str, n: int, image: Path | None = None) -> list[QARecord]:
    return [QARecord(source=name, image_path=image or Path(f"/nonexistent/{name}/{i}.png"), image_id=i,
                     question_id=f"{name}-{i}", question=f"q{i}", answer="None.") for i in range(n)]


class EchoProcessor:
    """Stands in for PixelLMProcessor: returns which record it was given."""

    def __call__(self, record: QARecord):
        return SimpleNamespace(record=record, extra={})


def echo_mixture(weights, seed=0, sizes=(50, 70, 30)):
    sets = [QADataset(make_records(f"s{i}", n), EchoProcessor(), name=f"s{i}") for i, n in enumerate(sizes[: len(weights)])]
    return MixtureDataset(sets, weights, seed=seed)


def trace(mixture, indices):
    return [(s.extra["source"], s.record.question_id) for s in (mixture[i] for i in indices)]


# ----------------------------------------------------------------------------- MixtureDataset


def test_mixture_is_a_pure_function_of_seed_and_index():
    a, b = echo_mixture([1, 2, 1], seed=7), echo_mixture([1, 2, 1], seed=7)
    indices = list(range(300))
    assert trace(a, indices) == trace(b, indices)
    # order of access does not matter (resuming needs no replay)
    shuffled = list(reversed(indices))
    assert trace(a, shuffled) == list(reversed(trace(a, indices)))
    assert [a.locate(i) for i in (5, 123456789, 5)] == [b.locate(i) for i in (5, 123456789, 5)]
    # another seed gives another sequence
    other = echo_mixture([1, 2, 1], seed=8)
    same = sum(x == y for x, y in zip(trace(a, indices), trace(other, indices), strict=True))
    assert same < len(indices) // 2
    # records are in range and every source is used
    assert {a.locate(i)[0] for i in indices} == {0, 1, 2}
    assert all(0 <= r < len(a.datasets[s]) for s, r in (a.locate(i) for i in indices))
    assert len(a) == 150


def test_source_frequencies_follow_the_weights():
    mixture = echo_mixture([3, 1], seed=0)
    counts = Counter(mixture.locate(i)[0] for i in range(2000))
    assert abs(counts[0] / 2000 - 0.75) < 0.04
    assert counts[0] + counts[1] == 2000
    # record choice within a source is roughly uniform
    records = Counter(r for s, r in (mixture.locate(i) for i in range(2000)) if s == 0)
    assert len(records) == 50 and max(records.values()) < 4 * 2000 * 0.75 / 50

    zero = echo_mixture([1, 0, 1], seed=3)
    assert 1 not in {zero.locate(i)[0] for i in range(1000)}
    assert "p=0.500" in zero.describe() and "p=0.000" in zero.describe()


@pytest.mark.parametrize("weights", [[1, -1, 1], [0, 0, 0]])
def test_bad_weights(weights):
    with pytest.raises(ValueError):
        echo_mixture(weights)


def test_mixture_needs_one_weight_per_source():
    with pytest.raises(ValueError):
        MixtureDataset([QADataset(make_records("a", 2), EchoProcessor(), "a")], [1, 1])


# ----------------------------------------------------------------------------- StepSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_step_sampler_ranks_are_disjoint_contiguous_and_cover_every_index():
    batch, world, steps = 4, 3, 5
    per_rank = {r: take(StepSampler(batch_size=batch, rank=r, world_size=world), steps * batch) for r in range(world)}
    for r, indices in per_rank.items():
        for m in range(steps):
            chunk = indices[m * batch : (m + 1) * batch]
            first = (m * world + r) * batch
            assert chunk == list(range(first, first + batch))  # one contiguous range per micro-step
    everything = [i for indices in per_rank.values() for i in indices]
    assert len(everything) == len(set(everything))  # disjoint across ranks
    assert sorted(everything) == list(range(world * steps * batch))  # no gaps


@pytest.mark.parametrize("world, rank", [(1, 0), (4, 2)])
def test_step_sampler_resume_yields_the_tail_of_an_uninterrupted_run(world, rank):
    batch = 3
    full = take(StepSampler(batch_size=batch, rank=rank, world_size=world), 12 * batch)
    for k in (0, 1, 5, 11):
        resumed = take(StepSampler(batch_size=batch, rank=rank, world_size=world, start_step=k), (12 - k) * batch)
        assert resumed == full[k * batch :]


def test_resumed_mixture_samples_match():
    mixture = echo_mixture([2, 1, 1], seed=11)
    full = take(StepSampler(batch_size=4, rank=1, world_size=2), 40)
    resumed = take(StepSampler(batch_size=4, rank=1, world_size=2, start_step=6), 16)
    assert trace(mixture, resumed) == trace(mixture, full[24:])


# ----------------------------------------------------------------------------- QADataset


@pytest.fixture(scope="module")
def real_proc(tiny_model):
    return PixelLMProcessor.from_model(tiny_model, max_length=512)


def test_unusable_record_is_replaced_by_the_next_and_counted(real_proc, tmp_path):
    image = tmp_path / "ok.png"
    Image.new("RGB", (12, 10)).save(image)
    good = make_records("good", 2, image=image)
    bad = make_records("bad", 1)  # image missing
    data = QADataset([good[0], bad[0], good[1]], real_proc, name="mixed")
    assert data[0].question_id == "good-0" and data[0].extra["skipped"] == []
    replaced = data[1]
    assert replaced.question_id == "good-1" and replaced.extra["source"] == "mixed"
    (entry,) = replaced.extra["skipped"]
    assert entry["source"] == "mixed" and entry["stage"] == "train"
    assert entry["file"] == "/nonexistent/bad/0.png" and entry["where"] == "question bad-0"
    assert "not found" in entry["reason"]
    # wraps around the end
    wrapped = QADataset([good[0], bad[0]], real_proc, name="w")[1]
    assert wrapped.question_id == "good-0" and len(wrapped.extra["skipped"]) == 1


def test_all_records_unusable_raises(real_proc):
    with pytest.raises(DataError, match="could not be used"):
        QADataset(make_records("bad", 3), real_proc, name="bad")[0]
    with pytest.raises(DataError, match="no records"):
        QADataset([], real_proc, name="empty")


# ----------------------------------------------------------------------------- sources


def test_synthetic_source_is_generated_once_and_regenerated_on_change(tmp_path, monkeypatch):
    calls = []
    real = synthetic.generate_synthetic

    def counting(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **{**kwargs, "progress": False})

    monkeypatch.setattr(synthetic, "generate_synthetic", counting)
    settings = SyntheticSettings(dir=str(tmp_path / "synth"), num_train=4, num_val=2, num_compositional=2, seed=1)
    data = DataConfig(synthetic=settings)
    spec = SourceConfig(type="synthetic", split="train")

    first = sources.load_source(spec, data)
    assert len(calls) == 1
    stamp = tmp_path / "synth" / "settings.json"
    assert json.loads(stamp.read_text()) == asdict(settings)
    assert {r.image_id for r in first} == set(range(4)) and all(r.source == "synthetic:train" for r in first)
    assert all(r.image_path.is_file() for r in first)

    again = sources.load_source(spec, data)
    val = sources.load_source(SourceConfig(type="synthetic", split="val"), data)
    assert len(calls) == 1  # the stamp matches: nothing regenerated
    assert [(r.question_id, r.answer) for r in again] == [(r.question_id, r.answer) for r in first]
    assert {r.image_id for r in val} == {0, 1}

    data.synthetic.num_train = 6
    changed = sources.load_source(spec, data)
    assert len(calls) == 2
    assert {r.image_id for r in changed} == set(range(6))
    assert json.loads(stamp.read_text())["num_train"] == 6

    stamp.write_text("{}")  # a stale stamp regenerates too
    sources.load_source(spec, data)
    assert len(calls) == 3


def test_synthetic_records_are_deterministic_for_a_seed(tmp_path):
    make = lambda d: sources.load_source(  # noqa: E731
        SourceConfig(type="synthetic"),
        DataConfig(synthetic=SyntheticSettings(dir=str(tmp_path / d), num_train=3, num_val=0, num_compositional=0)))
    a, b = make("a"), make("b")
    assert [(r.question, r.answer) for r in a] == [(r.question, r.answer) for r in b]
    assert np.array_equal(np.asarray(Image.open(a[0].image_path)), np.asarray(Image.open(b[0].image_path)))


def test_source_missing_required_keys():
    from pixellm.config import ConfigError

    with pytest.raises(ConfigError, match="data.train\\[2\\]: a muse source needs annotations, image_root"):
        sources.load_source(SourceConfig(type="muse"), DataConfig(), where="data.train[2]")
