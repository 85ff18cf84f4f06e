"""Token lengths of a dataset under a run's tokenizer and template: what `data.max_length`
keeps and what it cuts (`pixellm validate-data ... --config CONFIG`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from .errors import DataError
from .records import QARecord


def token_lengths(records: Iterable[QARecord], processor) -> dict:
    """Prompt + whole-answer token counts (image tokens included, before any truncation) of
    `records` under `processor`, their percentiles, and how many answers are longer than
    `processor.max_length`: those are cut when training (trailing targets dropped, no EOS).
    Records the processor refuses (the model's tokens in the text) are counted apart."""
    lengths, over, refused = [], Counter(), 0
    for r in records:
        try:
            n = len(processor.prompt_ids(r.question)) + len(processor.answer_ids(r.answer))
        except DataError:
            refused += 1
            continue
        lengths.append(n)
        if n > processor.max_length:
            over[r.source] += 1
    arr = np.asarray(lengths or [0])
    p50, p90, p99 = (int(np.percentile(arr, q)) for q in (50, 90, 99))
    return {"records": len(lengths), "refused": refused, "max_length": processor.max_length,
            "p50": p50, "p90": p90, "p99": p99, "max": int(arr.max()), "truncated": sum(over.values()),
            "truncated_by_source": dict(over)}


def format_lengths(stats: dict) -> str:
    return (f"token lengths (prompt + answer, image tokens included) of {stats['records']} questions: "
            f"p50 {stats['p50']}, p90 {stats['p90']}, p99 {stats['p99']}, max {stats['max']}; "
            f"{stats['truncated']} longer than max_length={stats['max_length']} would be cut "
            f"(trailing targets dropped)" + (f"; {stats['refused']} refused" if stats["refused"] else ""))
