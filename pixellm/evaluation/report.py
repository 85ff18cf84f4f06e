"""Plain-text tables of evaluation metrics."""

from __future__ import annotations

COLUMNS = ("gIoU", "cIoU", "box_P@0.5", "count_acc", "N-acc", "T-acc", "num_questions")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(results: dict[str, dict]) -> str:
    """{dataset: metrics} -> an aligned table with the columns any of them has."""
    cols = [c for c in COLUMNS if any(c in m for m in results.values())]
    rows = [["dataset", *cols]] + [[name, *(_cell(m.get(c)) for c in cols)] for name, m in results.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
