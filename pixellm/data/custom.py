"""Our custom JSON Lines format (README "Custom data"): loader and validator.

One record per line, one image per record::

    {"image": "rel/path.jpg", "image_id": 7,                      # image_id optional
     "conversations": [{"question": "...", "answer": "The cat <seg> ...",
                        "masks": [<RLE dict | polygon list | "path/to/mask.png">, ...],
                        "phrases": ["cat", ...]}]}                # phrases optional

The answer holds one "<seg>" per mask, in order; a question without a target has no "<seg>"
and no masks ("masks" may then be left out). Image and mask PNG paths resolve against
`image_root`. Unknown keys are ignored. Blank lines are skipped but still counted, so line
numbers match an editor's. Ids: image_id = the record's "image_id", else its line number;
question_id = "<line number>:<conversation index>" (both 1-based line, 0-based conversation).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..constants import IMAGE_TOKEN, SEG_PLACEHOLDER
from ..conversation import codebook_token_in
from .errors import DataError, Problem
from .images import ImageReadError, cached_image_size, image_size
from .masks import MaskDecodeError, decode_mask
from .records import QARecord

Issue = tuple[str, str]
"""(location inside a line, e.g. "conversation 1, mask 0" or "", reason). A reason starting
with WARNING marks a usable record that is probably not what was meant."""
WARNING = "warning: "


def load_custom(annotations: Path, image_root: Path, source: str = "custom",
                skipped: list[Problem] | None = None) -> list[QARecord]:
    """One QARecord per conversation of every line.

    A bad line (syntax, keys, types, "<seg>" counts, the model's tokens in its text, an image
    that is missing) raises DataError, or, when `skipped` is given, is appended to it and left
    out; a file without any usable line is a DataError either way. Image sizes come from the
    image headers (cheap); masks stay encoded (`validate_custom` checks that they decode).
    """
    annotations, image_root = Path(annotations), Path(image_root)
    records: list[QARecord] = []
    sizes: dict[Path, tuple[int, int]] = {}
    bad: list[Problem] = []
    for line_no, text in _numbered_lines(annotations, bad if skipped is not None else None):
        obj, issues = _parse(text)
        image_path = image_root / obj["image"] if obj is not None else None
        if obj is not None and image_path not in sizes:
            try:
                sizes[image_path] = image_size(image_path, full_decode=False)
            except ImageReadError as e:
                issues = [("", f"image {e}")]
        if issues:
            if skipped is None:
                raise DataError(_problem(annotations, line_no, issues[0]))
            bad.append(_problem(annotations, line_no, issues[0]))
            continue
        height, width = sizes[image_path]
        image_id = obj.get("image_id", line_no)
        for c, conv in enumerate(obj["conversations"]):
            records.append(QARecord(
                source=source, image_path=image_path, image_id=image_id,
                question_id=f"{line_no}:{c}", question=conv["question"], answer=conv["answer"],
                masks=list(conv.get("masks", [])), phrases=list(conv.get("phrases", [])),
                height=height, width=width, mask_root=image_root,
            ))
    if skipped is not None:
        skipped.extend(bad)
    if not records:
        reason = f"no usable records ({len(bad)} bad lines; the first: {bad[0].where}: {bad[0].reason})" if bad \
            else "no records (the file is empty)"
        raise DataError(Problem(str(annotations), "file", reason))
    return records


def validate_custom(annotations: Path, image_root: Path) -> list[Problem]:
    """Every problem of every line (never raises on bad data): JSON syntax, keys and types,
    "<seg>" count vs masks, image readable, every mask decodable at the image's size."""
    annotations, image_root = Path(annotations), Path(image_root)
    if not annotations.is_file():
        return [Problem(str(annotations), "file", "not found")]
    problems: list[Problem] = []
    sizes: dict[Path, tuple[int, int] | str] = {}
    seen_any = False
    try:
        for line_no, text in _numbered_lines(annotations, problems):
            seen_any = True
            obj, issues = _parse(text)
            if obj is not None:
                issues += _content_issues(obj, image_root, sizes)
            problems.extend(_problem(annotations, line_no, issue) for issue in issues)
    except DataError as e:  # the file itself cannot be read
        return problems + [e.problem or Problem(str(annotations), "file", str(e))]
    if not seen_any and not problems:
        problems.append(Problem(str(annotations), "file", "no records (the file is empty)"))
    return problems


def _problem(file: Path, line_no: int, issue: Issue) -> Problem:
    where, reason = issue
    warning = reason.startswith(WARNING)
    return Problem(str(file), f"line {line_no}" + (f", {where}" if where else ""),
                   reason.removeprefix(WARNING), warning=warning)


def _numbered_lines(path: Path, problems: list[Problem] | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) for every non-blank line. Undecodable bytes are a problem
    (appended to `problems` when given, else raised)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(Problem(str(path), "file", f"cannot be read: {e}")) from None
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").strip()
        except UnicodeDecodeError as e:
            problem = _problem(path, line_no, ("", f"not UTF-8 text: {e.reason} at byte {e.start}"))
            if problems is None:
                raise DataError(problem) from None
            problems.append(problem)
            continue
        if text:
            yield line_no, text


def _parse(text: str) -> tuple[dict | None, list[Issue]]:
    """The line's JSON object and its structural issues (keys, types, "<seg>" counts)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, [("", f"invalid JSON at column {e.colno}: {e.msg}")]
    issues = _record_issues(obj)
    return (obj if not issues else None), issues


def _record_issues(obj: Any) -> list[Issue]:
    if not isinstance(obj, dict):
        return [("", f"a record must be a JSON object, got {type(obj).__name__}")]
    issues: list[Issue] = []
    if not isinstance(obj.get("image"), str) or not obj.get("image"):
        issues.append(("", "'image' must be a non-empty string (a path relative to the image root)"))
    if "image_id" in obj and (isinstance(obj["image_id"], bool) or not isinstance(obj["image_id"], (int, str))):
        issues.append(("", "'image_id' must be an integer or a string"))
    convs = obj.get("conversations")
    if not isinstance(convs, list) or not convs:
        issues.append(("", "'conversations' must be a non-empty list"))
        return issues
    for c, conv in enumerate(convs):
        issues.extend((f"conversation {c}" + (f", {w}" if w else ""), r) for w, r in _conversation_issues(conv))
    return issues


def _conversation_issues(conv: Any) -> list[Issue]:
    if not isinstance(conv, dict):
        return [("", f"a conversation must be a JSON object, got {type(conv).__name__}")]
    issues: list[Issue] = []
    for key in ("question", "answer"):
        if not isinstance(conv.get(key), str) or (key == "question" and not conv[key].strip()):
            issues.append(("", f"'{key}' must be a {'non-empty ' if key == 'question' else ''}string"))
    masks = conv.get("masks", [])
    if not isinstance(masks, list):
        return issues + [("", "'masks' must be a list")]
    for m, spec in enumerate(masks):
        if not isinstance(spec, (dict, list, str)):
            issues.append((f"mask {m}", "a mask must be an RLE object, a polygon list or a PNG path, "
                           f"got {type(spec).__name__}"))
    issues += _user_text_issues(conv)
    if isinstance(conv.get("answer"), str):
        n_seg = conv["answer"].count(SEG_PLACEHOLDER)
        if n_seg != len(masks):
            issues.append(("", f"the answer has {n_seg} {SEG_PLACEHOLDER} but there are {len(masks)} masks"))
    phrases = conv.get("phrases")
    if phrases is not None:
        if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            issues.append(("", "'phrases' must be a list of strings"))
        elif len(phrases) != len(masks):
            issues.append(("", f"{len(phrases)} phrases for {len(masks)} masks"))
    return issues


def _user_text_issues(conv: dict) -> list[Issue]:
    """The model's own tokens written in user text (processor.clean_user_text refuses them)."""
    issues = []
    for key in ("question", "answer"):
        text = conv.get(key)
        if isinstance(text, str) and (token := codebook_token_in(text)):
            issues.append(("", f"the {key} contains the codebook token {token}: mark a mask with "
                               f"{SEG_PLACEHOLDER} (codebook tokens are the model's own)"))
    if isinstance(conv.get("answer"), str) and IMAGE_TOKEN in conv["answer"]:
        issues.append(("", f"the answer contains {IMAGE_TOKEN}, which only the prompt may hold"))
    return issues


def _content_issues(obj: dict, image_root: Path, sizes: dict) -> list[Issue]:
    """Image readable and every mask decodable at the image's size (`sizes` caches images)."""
    size = cached_image_size(image_root / obj["image"], sizes)
    if isinstance(size, str):
        return [("", size)]
    height, width = size
    issues: list[Issue] = []
    for c, conv in enumerate(obj["conversations"]):
        if not conv["answer"].strip():
            issues.append((f"conversation {c}", WARNING + "the answer is empty: the model would learn to say nothing"))
        for m, spec in enumerate(conv.get("masks", [])):
            try:
                if not decode_mask(spec, height, width, root=image_root).any():
                    issues.append((f"conversation {c}, mask {m}", WARNING + "the mask is empty (no pixel is set)"))
            except MaskDecodeError as e:
                issues.append((f"conversation {c}, mask {m}", str(e)))
            except Exception as e:  # pycocotools raises bare errors on odd input
                issues.append((f"conversation {c}, mask {m}", f"mask does not decode: {e}"))
    return issues
