"""The averaging unit of a scored split: what one question is, said as `"per"` in every result.

gIoU averages pair IoUs, and a question gives one pair on the REFER family, so what a question
*is* changes the number (about 1 point on RefCOCO, VisionReasoner #12/#13):

* ``expression`` (REFER family and gRefCOCO, the default): one question per referring expression,
  as LISA, PixelLM and ReLA count them (RefCOCO val: 10,834).
* ``instance`` (REFER family, ``--per instance``): one question per referred object, its first
  expression in the refs file, as Seg-Zero / VisionReasoner count them (RefCOCO val: 3,811).
* ``question`` (MUSE, custom): one question of the file; its pairs are its matched instances.
  Joint VQA + grounding items: one item of the file, one pair (evaluation.joint).
* ``image`` / ``query`` (ReasonSeg): the first query of each image, as LISA's validation, or
  every query (``--all-queries``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data.records import QARecord

DEFAULT_PER = {"refer": "expression", "grefcoco": "expression", "muse": "question", "custom": "question",
               "reasonseg": "image", "joint": "question"}
REFER_PER = ("expression", "instance")


def check_per(protocol: str, per: str) -> None:
    """Raise ValueError unless `per` is a unit `protocol` can be averaged over."""
    allowed = REFER_PER if protocol == "refer" else (DEFAULT_PER[protocol], "query") if protocol == "reasonseg" \
        else (DEFAULT_PER[protocol],)
    if per not in allowed:
        raise ValueError(f"per={per!r} is not a unit of the {protocol} protocol; expected one of {allowed}")


def select_unit(records: Sequence[QARecord], per: str) -> tuple[list[QARecord], set[str]]:
    """(records scored, question ids left out) for REFER-family evaluation records averaged `per`.

    "instance" keeps the first expression of each referred object (`extra["ref_id"]`, records in
    refs-file order); "expression" keeps every record.
    """
    if per == "expression":
        return list(records), set()
    if per != "instance":
        raise ValueError(f"per must be one of {REFER_PER}, got {per!r}")
    kept, seen, left = [], set(), set()
    for r in records:
        ref = r.extra.get("ref_id")
        if ref is None:
            raise ValueError(f"question {r.question_id}: per='instance' needs REFER evaluation records (extra['ref_id'])")
        if ref in seen:
            left.add(str(r.question_id))
        else:
            seen.add(ref)
            kept.append(r)
    return kept, left
