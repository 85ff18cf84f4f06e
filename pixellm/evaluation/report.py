"""Plain-text tables of evaluation metrics."""

from __future__ import annotations

# (metrics key, column header). gIoU counts a no-target question answered with no mask as
# IoU 1, so the table puts gIoU over target questions and N-acc beside it: a model that never
# segments anything cannot look good on a split with many text-only questions.
COLUMNS = (
    ("gIoU", "gIoU"),
    ("gIoU_targets", "gIoU_tgt"),
    ("cIoU", "cIoU"),
    ("box_P@0.5", "box_P@0.5"),
    ("count_acc", "count_acc"),
    ("N-acc", "N-acc"),
    ("T-acc", "T-acc"),
    ("answer_acc", "answer_acc"),  # joint VQA + grounding items
    ("grounded_acc", "grounded_acc"),
    ("num_questions", "num_questions"),
)
LEGEND = {
    "gIoU_targets": "gIoU_tgt = gIoU over questions with a target",
    "N-acc": "N-acc = share of no-target questions answered with no mask",
    "grounded_acc": "grounded_acc = share of items whose grounding IoU >= 0.5",
}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(results: dict[str, dict]) -> str:
    """{dataset: metrics} -> an aligned table with the columns any of them has ("-" = None, e.g.
    N-acc on a split without no-target questions), then a one-line legend of the less obvious
    columns."""
    cols = [(k, h) for k, h in COLUMNS if any(k in m for m in results.values())]
    rows = [["dataset", *(h for _, h in cols)]]
    rows += [[name, *(_cell(m.get(k)) for k, _ in cols)] for name, m in results.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    out = [lines[0], "-" * len(lines[0]), *lines[1:]]
    legend = [text for key, text in LEGEND.items() if any(key == k for k, _ in cols)]
    if legend:
        out.append("(" + "; ".join(legend) + ")")
    return "\n".join(out)
