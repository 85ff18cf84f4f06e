"""MUSE (PixelLM release) loader and validator.

File: a JSON list of image records, each with `file_name` or `coco_url`, `height`, `width`,
optional `image_id`, `questions` (list[str]), `answers` (per question: list of instance dicts
with `segmentation`, `bbox`, `category_name`, optional `rephrased_name`) and optional
`text_answers` (per question: str with one `{seg}` per instance, in order, or null).
Every question becomes one QARecord whose masks are that question's instances, in order.
Ids: image_id = the record's `image_id`, else its index in the list; question_id =
"<record index>:<question index>".
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from ..constants import NO_TARGET_ANSWER, SEG_PLACEHOLDER
from ..conversation import codebook_token_in
from .errors import DataError, Problem
from .images import ImageReadError, image_size
from .jsonio import read_json_list
from .masks import MaskDecodeError, decode_mask
from .records import QARecord

log = logging.getLogger(__name__)

SEG_MARK = "{seg}"
"""Per-instance placeholder inside MUSE `text_answers`."""

PROGRESS_MIN = 1000
"""Validators show a tqdm bar on stderr from this many records up."""


@dataclass
class MuseStats:
    """How the answers of one `load_muse` call were made (counts of questions)."""

    questions: int = 0
    from_text_answers: int = 0
    template_no_text: int = 0  # text_answers missing or null
    template_mismatch: int = 0  # `{seg}` count differs from the instance count
    no_target: int = 0


def template_answer(names: list[str], capitalize: bool = True) -> str:
    """["the kettle", "the cup"] -> "The kettle <seg> and the cup <seg>." (one <seg> per name)."""
    parts = [f"{name.strip().rstrip('.').strip()} {SEG_PLACEHOLDER}" for name in names]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if capitalize:
        body = body[:1].upper() + body[1:]
    return body + "."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _instance_errors(inst: Any, where: str) -> list[str]:
    if not isinstance(inst, dict):
        return [f"{where}: instance is {type(inst).__name__}, not an object"]
    errs = []
    if "segmentation" not in inst:
        errs.append(f"{where}: missing key 'segmentation'")
    elif not isinstance(inst["segmentation"], (list, dict)):
        errs.append(f"{where}: segmentation is {type(inst['segmentation']).__name__}, not polygons or RLE")
    names = [inst.get(k) for k in ("rephrased_name", "category_name")]
    if not any(isinstance(n, str) and n.strip() for n in names):
        errs.append(f"{where}: needs a non-empty 'category_name' or 'rephrased_name'")
    return errs


def structure_errors(rec: Any) -> list[str]:
    """Reasons why one image record is malformed (missing keys, wrong types); [] when sound."""
    if not isinstance(rec, dict):
        return [f"record is {type(rec).__name__}, not an object"]
    errs = []
    if not isinstance(rec.get("file_name"), str) and not isinstance(rec.get("coco_url"), str):
        errs.append("needs a string 'file_name' or 'coco_url'")
    for key in ("height", "width"):
        if key not in rec:
            errs.append(f"missing key '{key}'")
        elif not _is_int(rec[key]) or rec[key] <= 0:
            errs.append(f"'{key}' must be a positive int, got {rec[key]!r}")
    if "image_id" in rec and not isinstance(rec["image_id"], (int, str)):
        errs.append(f"'image_id' must be int or str, got {type(rec['image_id']).__name__}")
    questions, answers = rec.get("questions"), rec.get("answers")
    if not isinstance(questions, list) or not all(isinstance(q, str) for q in questions):
        return errs + ["'questions' must be a list of strings" if "questions" in rec else "missing key 'questions'"]
    if not isinstance(answers, list) or len(answers) != len(questions):
        got = ("missing" if "answers" not in rec
               else f"{len(answers)} entries" if isinstance(answers, list) else type(answers).__name__)
        return errs + [f"'answers' must be a list with one entry per question ({len(questions)}), got {got}"]
    for q, insts in enumerate(answers):
        if not isinstance(insts, list):
            errs.append(f"question {q}: answers entry must be a list of instances")
            continue
        for k, inst in enumerate(insts):
            errs += _instance_errors(inst, f"question {q} instance {k}")
    texts = rec.get("text_answers")
    if texts is not None and (not isinstance(texts, list) or len(texts) != len(questions)
                              or not all(t is None or isinstance(t, str) for t in texts)):
        errs.append(f"'text_answers' must be a list of {len(questions)} strings or nulls")
    for q, text in enumerate(questions + [t for t in (texts if isinstance(texts, list) else []) if isinstance(t, str)]):
        if token := codebook_token_in(text):
            kind = f"question {q}" if q < len(questions) else "text_answers"
            errs.append(f"{kind}: contains the codebook token {token} (codebook tokens are the model's own)")
    return errs


def image_candidates(rec: dict, image_root: Path) -> list[Path]:
    """Where the record's image may lie, in lookup order: `file_name` under the image root, then
    under train2014/; `coco_url` under train2017/ or val2017/ as its URL says."""
    root = Path(image_root)
    if isinstance(rec.get("file_name"), str):
        return [root / rec["file_name"], root / "train2014" / rec["file_name"]]
    url_path = PurePosixPath(urlparse(rec["coco_url"]).path)
    folder = url_path.parent.name
    if folder not in ("train2017", "val2017"):
        raise ValueError(f"coco_url {rec['coco_url']!r} is not under train2017/ or val2017/")
    return [root / folder / url_path.name]


def resolve_image(rec: dict, image_root: Path) -> Path:
    """The first existing candidate, else the last one (so errors name the canonical place)."""
    candidates = image_candidates(rec, image_root)
    return next((p for p in candidates if p.exists()), candidates[-1])


def _names(instances: list[dict]) -> list[str]:
    out = []
    for inst in instances:
        name = inst.get("rephrased_name")
        out.append(name if isinstance(name, str) and name.strip() else inst["category_name"])
    return out


def _answer(text: str | None, instances: list[dict], stats: MuseStats) -> str:
    """Answer with one SEG_PLACEHOLDER per instance; templated when `text` cannot be used."""
    if not instances:
        stats.no_target += 1
        return NO_TARGET_ANSWER
    if text is None:
        stats.template_no_text += 1
    elif text.count(SEG_MARK) == len(instances):
        stats.from_text_answers += 1
        return text.replace(SEG_MARK, SEG_PLACEHOLDER)
    else:
        stats.template_mismatch += 1
    return template_answer(_names(instances))


def _questions(rec: dict, index: int, image_root: Path, split: str, stats: MuseStats) -> list[QARecord]:
    image_path = resolve_image(rec, image_root)
    texts = rec.get("text_answers") or [None] * len(rec["questions"])
    out = []
    for q, (question, instances) in enumerate(zip(rec["questions"], rec["answers"], strict=True)):
        stats.questions += 1
        out.append(QARecord(
            source="muse", image_path=image_path, image_id=rec.get("image_id", index),
            question_id=f"{index}:{q}", question=question,
            answer=_answer(texts[q], instances, stats),
            masks=[inst["segmentation"] for inst in instances], phrases=_names(instances),
            height=rec["height"], width=rec["width"], extra={"split": split},
        ))
    return out


def load_muse(annotations: Path, image_root: Path, split: str = "train",
              stats: MuseStats | None = None, skipped: list[Problem] | None = None) -> list[QARecord]:
    """One QARecord per question of every image record, in file order.

    stats: filled in place when given (answers from text_answers vs templated). Questions whose
    `{seg}` count mismatches their instances are also reported with a logging warning.
    Raises DataError (file, record index, reason) on a malformed record or unreadable file;
    with `skipped` given, a malformed record is appended to it and left out instead (an
    unreadable file, or one without any usable record, still raises).
    """
    path = Path(annotations)
    stats = stats if stats is not None else MuseStats()
    records: list[QARecord] = []
    bad: list[Problem] = []
    for i, rec in enumerate(read_json_list(path)):
        errs = structure_errors(rec)
        try:
            questions = [] if errs else _questions(rec, i, Path(image_root), split, stats)
        except ValueError as e:
            errs = [str(e)]
        if errs:
            if skipped is None:
                raise DataError(Problem(str(path), f"record {i}", "; ".join(errs)))
            bad.append(Problem(str(path), f"record {i}", "; ".join(errs)))
            continue
        records.extend(questions)
    if skipped is not None:
        skipped.extend(bad)
        if bad and not records:
            raise DataError(Problem(str(path), "file", f"no usable records ({len(bad)} bad; the first: "
                                                       f"{bad[0].where}: {bad[0].reason})"))
    if stats.template_mismatch:
        log.warning("%s: %d of %d questions have a {seg} count that differs from their instances; "
                    "their answers were built from a template", path, stats.template_mismatch, stats.questions)
    return records


class ImageChecker:
    """Checks that an image exists, decodes (PIL verify) and has the expected size; caches by path."""

    def __init__(self) -> None:
        self._sizes: dict[str, tuple[int, int] | str] = {}

    def _size(self, path: Path) -> tuple[int, int] | str:
        if not path.is_file():
            return f"image not found: {path}"
        try:
            height, width = image_size(path, full_decode=True)  # EXIF orientation applied
        except ImageReadError as e:
            return f"image {e}"
        return width, height

    def __call__(self, path: Path, height: int, width: int) -> str | None:
        """None when fine, else the reason."""
        key = str(path)
        if key not in self._sizes:
            self._sizes[key] = self._size(Path(path))
        got = self._sizes[key]
        if isinstance(got, str):
            return got
        if got != (width, height):
            return f"image {path} is {got[0]}x{got[1]} (WxH) but the record says {width}x{height}"
        return None


WARNING = "warning: "
"""Prefix of a reason that marks a usable record (a warning, not an error)."""


def _content_problems(rec: dict, image_root: Path, images: ImageChecker) -> list[tuple[str, str]]:
    """(where suffix, reason) for masks, placeholder counts and the image of a sound record."""
    h, w = rec["height"], rec["width"]
    out = []
    texts = rec.get("text_answers") or [None] * len(rec["questions"])
    for q, instances in enumerate(rec["answers"]):
        for k, inst in enumerate(instances):
            try:
                if not decode_mask(inst["segmentation"], h, w).any():
                    out.append((f" question {q} instance {k}", WARNING + "the mask is empty (no pixel is set)"))
            except MaskDecodeError as e:
                out.append((f" question {q} instance {k}", f"bad segmentation: {e}"))
            except Exception as e:  # malformed specs can make pycocotools raise anything
                out.append((f" question {q} instance {k}", f"bad segmentation: {type(e).__name__}: {e}"))
        if texts[q] is not None and texts[q].count(SEG_MARK) != len(instances):
            out.append((f" question {q}", f"text_answers has {texts[q].count(SEG_MARK)} {SEG_MARK} placeholders "
                        f"but {len(instances)} instances (the loader falls back to a template)"))
    try:
        candidates = image_candidates(rec, image_root)
    except ValueError as e:
        return out + [("", str(e))]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        out.append(("", "image not found: " + " or ".join(str(p) for p in candidates)))
    elif (reason := images(path, h, w)) is not None:
        out.append(("", reason))
    return out


def check_muse(annotations: Path, image_root: Path, progress: bool = False) -> tuple[int, list[Problem]]:
    """(number of image records checked, every problem found); never raises on bad data."""
    path = Path(annotations)
    try:
        data = read_json_list(path)
    except DataError as e:
        return 0, [e.problem or Problem(str(path), "-", str(e))]
    problems: list[Problem] = []
    images = ImageChecker()
    bar = tqdm(data, desc=f"validate {path.name}", file=sys.stderr,
               disable=not progress or len(data) < PROGRESS_MIN)
    for i, rec in enumerate(bar):
        errs = structure_errors(rec)
        if errs:
            problems += [Problem(str(path), f"record {i}", reason) for reason in errs]
            continue
        problems += [Problem(str(path), f"record {i}{where}", reason.removeprefix(WARNING),
                             warning=reason.startswith(WARNING))
                     for where, reason in _content_problems(rec, Path(image_root), images)]
    return len(data), problems


def validate_muse(annotations: Path, image_root: Path) -> list[Problem]:
    """Every problem of a MUSE file: JSON syntax, keys/types, masks, {seg} counts, images."""
    return check_muse(annotations, image_root)[1]
