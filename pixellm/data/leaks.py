"""Leak guard: training images that are also evaluation images.

RefCOCO/+ test images sit in RefCOCOg's training split and the reverse, MUSE and gRefCOCO draw
from the same COCO pool, so a mixture can train on the images a published number is measured
on. Before training, every training record's image is compared with the evaluation splits of
`data.leak_check` (dataset names as `evaluate.py --dataset` takes them, resolved under
`data.leak_check_root`; a split not on disk is reported as absent, not an error):

* an image whose file name carries a COCO id (`COCO_train2014_000000123456.jpg`,
  `000000123456.jpg`: 12 digits) is keyed by that id, so the same photo matches across
  train2014 / train2017 / val2017 copies;
* any other image (ReasonSeg, RefCLEF, custom data) by the SHA-1 of its file content.

Overlaps are counted per (training source, evaluation split) pair of distinct images and logged;
with `data.exclude_eval_images` the overlapping training records are dropped and counted.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError, Problem
from .records import QARecord

log = logging.getLogger(__name__)
COCO_NAME = re.compile(r"(?:^|_)(\d{12})\.(?:jpe?g|png)$", re.IGNORECASE)


def image_key(path: str | Path) -> str:
    """`coco:<id>` when the file name carries a COCO id, else `sha1:<hex>` of the file."""
    match = COCO_NAME.search(Path(path).name)
    return f"coco:{int(match.group(1))}" if match else _sha1(str(path))


@functools.cache
def _sha1(path: str) -> str:
    """Content hash of an image file (memoised: an image has many questions)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha1:{digest.hexdigest()}"


def keys_of(records: Iterable[QARecord]) -> set[str]:
    return {image_key(r.image_path) for r in records}


@dataclass
class LeakReport:
    """overlaps: {(train source, eval split): distinct shared images}; absent: eval splits not
    on disk; dropped: {train source: records removed} (with exclusion)."""

    overlaps: dict[tuple[str, str], int] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"leak check: {train} shares {n} images with {ev}" for (train, ev), n in sorted(self.overlaps.items()) if n]
        if not any(self.overlaps.values()):
            out.append("leak check: no training image is an evaluation image")
        if self.absent:
            out.append(f"leak check: not on disk (not checked): {', '.join(self.absent)}")
        out += [f"leak check: dropped {n} training records of {src} (data.exclude_eval_images)"
                for src, n in sorted(self.dropped.items()) if n]
        return out


def check_leaks(train: list[tuple[str, list[QARecord]]], evals: dict[str, list[QARecord] | None],
                exclude: bool) -> tuple[list[tuple[str, list[QARecord]]], LeakReport]:
    """Compare `train` ((name, records)) with `evals` ({split name: records, None = absent});
    returns the training sources (overlapping records removed when `exclude`) and the report."""
    report = LeakReport(absent=[name for name, recs in evals.items() if recs is None])
    eval_keys = {name: keys_of(recs) for name, recs in evals.items() if recs is not None}
    every_eval = set().union(*eval_keys.values()) if eval_keys else set()
    kept_sources = []
    for name, records in train:
        keys = [image_key(r.image_path) for r in records]
        distinct = set(keys)
        for ev, ek in eval_keys.items():
            report.overlaps[name, ev] = len(distinct & ek)
        if exclude:
            kept = [r for r, k in zip(records, keys, strict=True) if k not in every_eval]
            report.dropped[name] = len(records) - len(kept)
            records = kept
        kept_sources.append((name, records))
    return kept_sources, report


def _on_disk(spec) -> bool:
    """Whether an evaluation split's annotation files exist (else it is reported as absent)."""
    if spec.annotations:
        return Path(spec.annotations).is_file()
    if spec.type == "reasonseg":
        return (Path(spec.root) / spec.split).is_dir()
    return (Path(spec.root) / spec.name).is_dir()


def load_eval_splits(names: list[str], root: str, data) -> dict[str, list[QARecord] | None]:
    """{name: records of that evaluation split, or None when it is not on disk}. A split that is
    on disk but malformed raises its DataError (file, record, reason)."""
    from ..evaluation.datasets import parse_dataset
    from .sources import load_source

    out = {}
    for name in names:
        spec = parse_dataset(name, data_root=root).source
        out[name] = load_source(spec, data, mode="eval", where=f"data.leak_check ({name})") if _on_disk(spec) else None
    return out


def guard(sources: list[tuple[str, list[QARecord]]], data) -> list[tuple[str, list[QARecord]]]:
    """The training sources after the leak check of `data` (DataConfig); logs the report."""
    if not data.leak_check:
        return sources
    sources, report = check_leaks(sources, load_eval_splits(data.leak_check, data.leak_check_root, data),
                                  data.exclude_eval_images)
    for line in report.lines():
        log.warning(line)
    emptied = [name for name, records in sources if not records]
    if emptied:
        raise DataError(Problem(", ".join(emptied), "-", "every training record's image is in a data.leak_check "
                                "split; remove the source or set data.exclude_eval_images=false"))
    return sources
