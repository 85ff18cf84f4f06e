"""LLaVA-Instruct-150K style visual question answering (text answers, no masks).

The file is a JSON list of records::

    [{"id": "000000033471", "image": "000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"},
                        {"from": "gpt", "value": "A laptop and a cup."}, ...]}]

Every human/gpt pair becomes one QARecord (the turns are independent questions about the same
image). "<image>" and the newlines around it are removed from the question; the processor
inserts the image block itself. Ids: image_id = the record's "id" (else its index);
question_id = "<record index>:<turn index>".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..constants import SEG_PLACEHOLDER
from ..conversation import codebook_token_in, strip_image_tag
from .errors import DataError, Problem
from .jsonio import read_json_list
from .records import QARecord

HUMAN_ROLES = ("human", "user")
GPT_ROLES = ("gpt", "assistant")


def load_vqa(annotations: Path, image_root: Path, max_turns: int | None = None,
             skipped: list[Problem] | None = None) -> list[QARecord]:
    """One QARecord per human/gpt pair (at most `max_turns` pairs per record, from the start).

    Raises DataError naming the file, the record index and the reason for a malformed record;
    with `skipped` given, the record is appended to it and left out instead.
    """
    annotations, image_root = Path(annotations), Path(image_root)
    data = read_json_list(annotations)
    records: list[QARecord] = []
    for index, record in enumerate(data):
        try:
            records.extend(_record_to_qa(record, index, image_root, max_turns))
        except ValueError as e:
            problem = Problem(str(annotations), f"record {index}", str(e))
            if skipped is None:
                raise DataError(problem) from None
            skipped.append(problem)
    if skipped is not None and data and not records:
        raise DataError(Problem(str(annotations), "file", f"no usable records ({len(data)} bad)"))
    return records


def _record_to_qa(record: Any, index: int, image_root: Path, max_turns: int | None) -> list[QARecord]:
    """The QARecords of one record; ValueError (the reason) if it is malformed."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError("'image' must be a non-empty string")
    image_id = record.get("id", index)
    if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
        raise ValueError("'id' must be an integer or a string")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("'conversations' must be a non-empty list")
    if len(turns) % 2:
        raise ValueError(f"'conversations' has {len(turns)} turns; expected human/gpt pairs")
    pairs = [(_turn_text(turns, 2 * t, HUMAN_ROLES), _turn_text(turns, 2 * t + 1, GPT_ROLES))
             for t in range(len(turns) // 2)]
    if max_turns is not None:
        pairs = pairs[:max_turns]
    out = []
    for t, (question, answer) in enumerate(pairs):
        question = strip_image_tag(question)
        if not question:
            raise ValueError(f"turn {2 * t}: the question is empty")
        if SEG_PLACEHOLDER in answer:
            raise ValueError(f"turn {2 * t + 1}: the answer contains {SEG_PLACEHOLDER} but VQA data has no masks")
        if token := codebook_token_in(question + answer):
            raise ValueError(f"turn {2 * t}: contains the codebook token {token} (codebook tokens are the model's own)")
        out.append(QARecord(
            source="vqa", image_path=image_root / image, image_id=image_id,
            question_id=f"{index}:{t}", question=question, answer=answer.strip(),
        ))
    return out


def _turn_text(turns: list, i: int, roles: tuple[str, ...]) -> str:
    turn = turns[i]
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
        raise ValueError(f"turn {i} must be an object with a string 'value'")
    if turn.get("from") not in roles:
        raise ValueError(f"turn {i} is from {turn.get('from')!r}, expected {' or '.join(map(repr, roles))}")
    return turn["value"]
