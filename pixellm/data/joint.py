"""Joint VQA + grounding items (PixMMVP-style): a visual question paired with the mask of the
object it is about. Loader and validator; scoring is `pixellm.evaluation.joint`.

One JSON object per line::

    {"image": "img/0001.jpg", "question": "Is the butterfly's wing open or closed?",
     "choices": ["open", "closed"], "answer": "B", "object": "the butterfly's wing",
     "mask": <RLE dict | polygon list | "masks/0001.png">, "id": "0001"}

* ``choices`` (optional): a list of at least 2 distinct non-empty strings (at most 26). With
  choices the item is multiple choice and ``answer`` is the right option's letter ("A" is the
  first choice; "b", "(B)" and "B." are read as "B") or the right choice's text; a letter wins
  when a choice's text is itself a letter. Without choices ``answer`` is a short text answer
  (it must hold a letter or a digit).
* ``object``: the referring expression of the object the question is about; the grounding
  prompt is the REFER evaluation prompt for it (`grounding_prompt`).
* ``mask``: one mask in any form custom data accepts (masks.decode_mask: COCO RLE, polygon
  list, or a mask file path).
* ``id`` (optional, string or integer): the question id; else the 0-based line index (blank
  lines count, so the item on an editor's line N is "N-1"). Ids must be unique.

Image and mask file paths resolve against `image_root` (evaluate.py: the JSONL's folder unless
--image-root is given). Unknown keys are ignored; blank lines are skipped but counted.

Each item is one `QARecord`: question = the VQA prompt (`vqa_prompt`), answer = the REFER
evaluation answer "It is <seg>." with masks = [mask] and phrases = [object] (so the record is a
valid single-target referring question), and `extra` = {"choices": list or None, "answer": the
right letter (multiple choice) or the reference text, "answer_text": the right choice's text
or the reference text, "object", "grounding_prompt", "line"}.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..conversation import codebook_token_in
from .custom import _numbered_lines  # the one reader of JSON Lines (line numbers, UTF-8 problems)
from .errors import DataError, Problem
from .images import cached_image_size
from .masks import MaskDecodeError, decode_mask
from .records import QARecord
from .refer import EVAL_ANSWER

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
"""Last line of a multiple-choice VQA prompt (LLaVA's MMVP evaluation prompt)."""
REFER_PROMPT = "Segment: "
"""Prefix of the REFER evaluation question (data/refer.py builds "Segment: " + expression)."""
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
WARNING = "warning: "

_LETTER = re.compile(r"^\(?([A-Za-z])[).]?$")


def option_letters(n: int) -> str:
    """The option letters of n choices: "AB" for 2."""
    return LETTERS[:n]


def vqa_prompt(question: str, choices: list[str] | None) -> str:
    """The question; for multiple choice followed by one "A. text" line per choice and
    MC_INSTRUCTION (LLaVA's MMVP convention)."""
    if not choices:
        return question.strip()
    lines = [question.strip(), *(f"{letter}. {c.strip()}" for letter, c in zip(LETTERS, choices)), MC_INSTRUCTION]
    return "\n".join(lines)


def grounding_prompt(obj: str) -> str:
    """The REFER evaluation prompt for the referring expression `obj`."""
    return REFER_PROMPT + obj.strip()


def answer_letter(answer: str, choices: list[str]) -> str | None:
    """The right option's letter: `answer` read as a letter ("B", "b", "(B)", "B."), else the
    letter of the choice whose text it equals (case and outer spaces ignored); None if neither."""
    letters = option_letters(len(choices))
    found = _LETTER.match(answer.strip())
    if found and found.group(1).upper() in letters:
        return found.group(1).upper()
    texts = [c.strip().lower() for c in choices]
    if answer.strip().lower() in texts:
        return letters[texts.index(answer.strip().lower())]
    return None


def load_joint(path: Path, image_root: Path, source: str = "joint") -> list[QARecord]:
    """One QARecord per line (module docstring). The first bad line (JSON syntax, keys and
    types, an unknown answer letter, a duplicate id, an image that does not read, a mask that
    does not decode at the image's size) raises DataError naming the file, line and reason:
    an evaluation split is never scored with items silently left out. Image sizes come from
    the image headers."""
    path, image_root = Path(path), Path(image_root)
    records: list[QARecord] = []
    sizes: dict[Path, tuple[int, int] | str] = {}
    first_line: dict[str, int] = {}
    for line_no, text in _numbered_lines(path):
        obj, issues = _parse(text)
        if obj is not None:
            issues = [r for r in _content_issues(obj, image_root, sizes, full_decode=False)
                      if not r.startswith(WARNING)]
        qid = None if obj is None else question_id(obj, line_no)
        if not issues and qid in first_line:
            issues = [f"duplicate id {qid!r} (first on line {first_line[qid]})"]
        if issues:
            raise DataError(Problem(str(path), f"line {line_no}", issues[0]))
        first_line[qid] = line_no
        records.append(_record(obj, qid, line_no, image_root, sizes[image_root / obj["image"]], source))
    if not records:
        raise DataError(Problem(str(path), "file", "no records (the file is empty)"))
    return records


def validate_joint(path: Path, image_root: Path) -> list[Problem]:
    """Every problem of every line (never raises on bad data), as load_joint finds them but
    with images fully decoded, plus warnings for usable items that are probably mistakes (an
    empty mask: no grounding can score on it)."""
    path, image_root = Path(path), Path(image_root)
    if not path.is_file():
        return [Problem(str(path), "file", "not found")]
    problems: list[Problem] = []
    sizes: dict[Path, tuple[int, int] | str] = {}
    first_line: dict[str, int] = {}
    seen_any = False
    try:
        for line_no, text in _numbered_lines(path, problems):
            seen_any = True
            obj, issues = _parse(text)
            if obj is not None:
                issues = _content_issues(obj, image_root, sizes, full_decode=True)
                qid = question_id(obj, line_no)
                if qid in first_line:
                    issues.append(f"duplicate id {qid!r} (first on line {first_line[qid]})")
                first_line.setdefault(qid, line_no)
            problems.extend(_problem(path, line_no, reason) for reason in issues)
    except DataError as e:  # the file itself cannot be read
        return problems + [e.problem or Problem(str(path), "file", str(e))]
    if not seen_any and not problems:
        problems.append(Problem(str(path), "file", "no records (the file is empty)"))
    return problems


def question_id(obj: dict, line_no: int) -> str:
    """The item's "id" as a string, else its 0-based line index."""
    return str(obj["id"]) if "id" in obj else str(line_no - 1)


def _problem(path: Path, line_no: int, reason: str) -> Problem:
    warning = reason.startswith(WARNING)
    return Problem(str(path), f"line {line_no}", reason.removeprefix(WARNING), warning=warning)


def _record(obj: dict, qid: str, line_no: int, image_root: Path, size: tuple[int, int], source: str) -> QARecord:
    choices = obj.get("choices")
    if choices:
        letter = answer_letter(obj["answer"], choices)
        answer, answer_text = letter, choices[LETTERS.index(letter)]
    else:
        answer = answer_text = obj["answer"].strip()
    height, width = size
    extra = {"choices": list(choices) if choices else None, "answer": answer, "answer_text": answer_text,
             "object": obj["object"], "grounding_prompt": grounding_prompt(obj["object"]), "line": line_no}
    return QARecord(
        source=source, image_path=image_root / obj["image"], image_id=obj["image"], question_id=qid,
        question=vqa_prompt(obj["question"], choices), answer=EVAL_ANSWER, masks=[obj["mask"]],
        phrases=[obj["object"]], height=height, width=width, mask_root=image_root, extra=extra,
    )


def _parse(text: str) -> tuple[dict | None, list[str]]:
    """The line's JSON object (None if it has issues) and its structural issues."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, [f"invalid JSON at column {e.colno}: {e.msg}"]
    issues = _item_issues(obj)
    return (obj if not issues else None), issues


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _item_issues(obj: Any) -> list[str]:
    """Keys and types of one item: every issue found, in key order."""
    if not isinstance(obj, dict):
        return [f"an item must be a JSON object, got {type(obj).__name__}"]
    issues = [f"'{key}' must be a non-empty string" + (" (a path relative to the image root)" if key == "image" else "")
              for key in ("image", "question", "object") if not _nonempty_str(obj.get(key))]
    if "id" in obj and (isinstance(obj["id"], bool) or not isinstance(obj["id"], (int, str))):
        issues.append("'id' must be a string or an integer")
    if "mask" not in obj:
        issues.append("'mask' is missing (an RLE object, a polygon list or a mask file path)")
    elif not isinstance(obj["mask"], (dict, list, str)):
        issues.append(f"'mask' must be an RLE object, a polygon list or a mask file path, got {type(obj['mask']).__name__}")
    issues += _answer_issues(obj)
    for key in ("question", "object"):
        if isinstance(obj.get(key), str) and (token := codebook_token_in(obj[key])):
            issues.append(f"'{key}' contains the codebook token {token} (codebook tokens are the model's own)")
    return issues


def _answer_issues(obj: dict) -> list[str]:
    """`choices` and `answer`: a known letter or choice text, or a short text answer."""
    choices, answer = obj.get("choices"), obj.get("answer")
    if not _nonempty_str(answer):
        return ["'answer' must be a non-empty string"]
    if choices is None:
        return [] if re.search(r"[^\W_]", answer) else [f"the short answer {answer!r} has no letter or digit"]
    if not isinstance(choices, list) or not all(_nonempty_str(c) for c in choices):
        return ["'choices' must be a list of non-empty strings"]
    if not 2 <= len(choices) <= len(LETTERS):
        return [f"'choices' must hold 2 to {len(LETTERS)} options, got {len(choices)}"]
    texts = [c.strip().lower() for c in choices]
    if len(set(texts)) < len(texts):
        return ["'choices' holds the same option twice"]
    if token := next((t for c in choices if (t := codebook_token_in(c))), None):
        return [f"'choices' contains the codebook token {token} (codebook tokens are the model's own)"]
    if answer_letter(answer, choices) is None:
        letters = option_letters(len(choices))
        return [f"unknown answer {answer!r}: expected an option letter {letters[0]}-{letters[-1]} "
                "or one of the choices' texts"]
    return []


def _content_issues(obj: dict, image_root: Path, sizes: dict, full_decode: bool) -> list[str]:
    """The image reads (its size is cached in `sizes`, or the reason it does not read) and the
    mask decodes at that size; an empty mask is a warning."""
    size = cached_image_size(image_root / obj["image"], sizes, full_decode=full_decode)
    if isinstance(size, str):
        return [size]
    try:
        mask = decode_mask(obj["mask"], *size, root=image_root)
    except MaskDecodeError as e:
        return [f"mask: {e}"]
    except Exception as e:  # pycocotools raises bare errors on odd input
        return [f"mask does not decode: {e}"]
    return [] if mask.any() else [WARNING + "the mask is empty (no pixel is set)"]
