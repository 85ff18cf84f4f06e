"""RefCOCO / RefCOCO+ / RefCOCOg / RefCLEF (REFER layout) loader and validator.

Layout: `<root>/<name>/refs(<split_by>).p` (pickle, read with `safe_pickle`: list of refs with
`ref_id`, `ann_id`, `image_id`, `split`, `sentences` [{`sent`, `sent_id`, ...}], `category_id`)
and `<root>/<name>/instances.json` (COCO `images`, `annotations`, `categories`). Images are read
from `<image_root>/<file_name of the instances.json image>`.
The shared helpers here (instances, ref checks, `check_refs`) also serve `grefcoco`.
"""

from __future__ import annotations

import random
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..constants import SEG_PLACEHOLDER
from .errors import DataError, Problem
from .jsonio import read_json
from .masks import decode_mask
from .muse import PROGRESS_MIN, ImageChecker, template_answer
from .records import QARecord
from .safe_pickle import load_refs_pickle

EVAL_ANSWER = f"It is {SEG_PLACEHOLDER}."
"""Answer of a single-target referring question."""


def default_image_root(root: Path, name: str) -> Path:
    """COCO train2014 under the REFER root; SAIAPR TC-12 for refclef."""
    if name == "refclef":
        return Path(root) / "images" / "saiapr_tc-12"
    return Path(root) / "images" / "mscoco" / "images" / "train2014"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry_error(entry: Any, keys: dict[str, tuple]) -> str | None:
    if not isinstance(entry, dict):
        return f"is {type(entry).__name__}, not an object"
    for key, types in keys.items():
        if key not in entry:
            return f"missing key '{key}'"
        if not isinstance(entry[key], types) or isinstance(entry[key], bool):
            return f"'{key}' has type {type(entry[key]).__name__}"
    return None


_IMAGE_KEYS = {"id": (int, str), "file_name": (str,), "height": (int,), "width": (int,)}
_ANN_KEYS = {"id": (int, str), "image_id": (int, str), "segmentation": (list, dict)}


def read_instances(path: Path) -> tuple[dict, dict, list[Problem]]:
    """instances.json -> (images by id, annotations by id, problems of skipped entries).

    Raises DataError when the file cannot be read or parsed at all.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DataError(Problem(str(path), "-", "expected a COCO object with 'images' and 'annotations' lists"))
    problems, images, anns = [], {}, {}
    for section, keys, out in (("images", _IMAGE_KEYS, images), ("annotations", _ANN_KEYS, anns)):
        for i, entry in enumerate(data[section]):
            reason = _entry_error(entry, keys)
            if reason:
                problems.append(Problem(str(path), f"{section}[{i}]", reason))
            else:
                out[entry["id"]] = entry
    return images, anns, problems


def load_instances(path: Path) -> tuple[dict, dict]:
    """Like `read_instances` but any bad entry raises DataError."""
    images, anns, problems = read_instances(path)
    if problems:
        raise DataError(problems[0])
    return images, anns


def target_ann_ids(ref: dict) -> list:
    """gRefCOCO `ann_id` (list, int, [-1] or []) -> the target annotation ids ([] = no target)."""
    ids = ref.get("ann_id")
    ids = ids if isinstance(ids, list) else [ids]
    return [a for a in ids if a != -1]


def ref_errors(ref: Any, images: dict, anns: dict, multi: bool = False) -> list[str]:
    """Why a ref cannot be used ([] when sound). multi: gRefCOCO refs (list `ann_id`, no_target)."""
    if not isinstance(ref, dict):
        return [f"ref is {type(ref).__name__}, not a dict"]
    errs = [f"missing key '{k}'" for k in ("ref_id", "image_id", "split", "sentences", "ann_id") if k not in ref]
    if errs:
        return errs
    if not isinstance(ref["image_id"], (int, str)) or ref["image_id"] not in images:
        errs.append(f"image_id {ref['image_id']!r} is not in instances.json")
    sents = ref["sentences"]
    if not isinstance(sents, list) or not sents:
        errs.append("'sentences' must be a non-empty list")
    else:
        for j, s in enumerate(sents):
            if not isinstance(s, dict) or not isinstance(s.get("sent"), str) or not _is_int(s.get("sent_id")):
                errs.append(f"sentence {j} needs a str 'sent' and an int 'sent_id'")
    ann_ids = target_ann_ids(ref) if multi else [ref["ann_id"]]
    for a in ann_ids:
        if not isinstance(a, (int, str)) or isinstance(a, bool):
            errs.append(f"ann_id {a!r} is not an annotation id (int or str)")
        elif a not in anns:
            errs.append(f"ann_id {a!r} is not in instances.json")
        elif anns[a]["image_id"] != ref["image_id"]:
            errs.append(f"ann_id {a!r} belongs to image {anns[a]['image_id']!r}, not {ref['image_id']!r}")
    if multi and ref.get("no_target") and ann_ids:
        errs.append(f"no_target is true but ann_id lists targets {ann_ids}")
    return errs


def ref_where(index: int, ref: Any) -> str:
    rid = ref.get("ref_id") if isinstance(ref, dict) else None
    return f"ref {index} (ref_id {rid})"


def valid_refs(refs: list, refs_file: Path, images: dict, anns: dict, split: str | None,
               multi: bool = False) -> list[dict]:
    """Refs of `split` (None: all), raising DataError (file, ref, reason) on the first bad one."""
    out = []
    for i, ref in enumerate(refs):
        errs = ref_errors(ref, images, anns, multi)
        if errs:
            raise DataError(Problem(str(refs_file), ref_where(i, ref), "; ".join(errs)))
        if split is None or ref["split"] == split:
            out.append(ref)
    return out


def _record(name: str, ref: dict, image: dict, image_root: Path, qid: str, question: str,
            answer: str, masks: list, phrases: list[str], extra: dict) -> QARecord:
    return QARecord(source="refer", image_path=image_root / image["file_name"], image_id=ref["image_id"],
                    question_id=qid, question=question, answer=answer, masks=masks, phrases=phrases,
                    height=image["height"], width=image["width"], extra={"dataset": name, **extra})


def _eval_records(name: str, refs: list[dict], images: dict, anns: dict, image_root: Path) -> list[QARecord]:
    out = []
    for ref in refs:
        seg = anns[ref["ann_id"]]["segmentation"]
        for s in ref["sentences"]:
            extra = {"phrase": s["sent"], "ref_id": ref["ref_id"], "ann_id": ref["ann_id"], "sent_id": s["sent_id"]}
            out.append(_record(name, ref, images[ref["image_id"]], image_root, str(s["sent_id"]),
                               "Segment: " + s["sent"], EVAL_ANSWER, [seg], [s["sent"]], extra))
    return out


def group_expressions(refs: list[dict], max_targets: int, rng: random.Random) -> list[list[tuple[dict, dict]]]:
    """Every (ref, sentence) of one image, shuffled, packed greedily into groups of at most
    `max_targets` pairs with pairwise different annotations. Deterministic given `rng`'s state."""
    pairs = [(ref, s) for ref in refs for s in ref["sentences"]]
    rng.shuffle(pairs)
    groups: list[list[tuple[dict, dict]]] = []
    for ref, s in pairs:
        for g in groups:
            if len(g) < max_targets and all(r["ann_id"] != ref["ann_id"] for r, _ in g):
                g.append((ref, s))
                break
        else:
            groups.append([(ref, s)])
    return groups


def _train_records(name: str, refs: list[dict], images: dict, anns: dict, image_root: Path,
                   max_targets: int, seed: int) -> list[QARecord]:
    by_image: dict = defaultdict(list)
    for ref in refs:
        by_image[ref["image_id"]].append(ref)
    rng = random.Random(seed)
    out = []
    for image_id in by_image:  # first-appearance order: deterministic for a given file
        for g, group in enumerate(group_expressions(by_image[image_id], max_targets, rng)):
            phrases = [s["sent"] for _, s in group]
            extra = {"ref_ids": [r["ref_id"] for r, _ in group], "ann_ids": [r["ann_id"] for r, _ in group],
                     "sent_ids": [s["sent_id"] for _, s in group]}
            out.append(_record(name, group[0][0], images[image_id], image_root, f"{image_id}:{g}",
                               "Segment: " + "; ".join(phrases), template_answer(phrases, capitalize=False),
                               [anns[r["ann_id"]]["segmentation"] for r, _ in group], phrases, extra))
    return out


def load_refer(root: Path, name: str, split_by: str, split: str, image_root: Path | None = None,
               mode: str = "eval", max_targets: int = 3, seed: int = 0) -> list[QARecord]:
    """QARecords of one split.

    mode "eval": one record per sentence, question_id = str(sent_id), answer EVAL_ANSWER, one mask.
    mode "train": expressions of the same image grouped into questions of <= max_targets targets
    ("Segment: a; b; c" -> "a <seg>, b <seg> and c <seg>."), masks in phrase order,
    question_id = "<image_id>:<group index>". Raises DataError on unreadable or malformed data.
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    if max_targets < 1:
        raise ValueError(f"max_targets must be >= 1, got {max_targets}")
    folder = Path(root) / name
    refs_file = folder / f"refs({split_by}).p"
    images, anns = load_instances(folder / "instances.json")
    refs = valid_refs(load_refs_pickle(refs_file), refs_file, images, anns, split)
    image_root = Path(image_root) if image_root is not None else default_image_root(root, name)
    if mode == "eval":
        return _eval_records(name, refs, images, anns, image_root)
    return _train_records(name, refs, images, anns, image_root, max_targets, seed)


def check_refs(refs: list, refs_file: Path, instances_file: Path, image_root: Path, multi: bool = False,
               split: str | None = None, progress: bool = False) -> tuple[int, list[Problem]]:
    """(refs checked, problems): instances entries, ref keys/ids, duplicate sent_ids, every used
    annotation's mask decodes at its image size, every used image exists/decodes/has its size."""
    try:
        images, anns, problems = read_instances(instances_file)
    except DataError as e:
        return 0, [e.problem or Problem(str(instances_file), "-", str(e))]
    sent_ids: Counter = Counter()
    used_anns, used_images = set(), set()
    bar = tqdm(refs, desc=f"validate {refs_file.name}", file=sys.stderr,
               disable=not progress or len(refs) < PROGRESS_MIN)
    n = 0
    for i, ref in enumerate(bar):
        if isinstance(ref, dict) and split is not None and ref.get("split") != split:
            continue
        n += 1
        errs = ref_errors(ref, images, anns, multi)
        problems += [Problem(str(refs_file), ref_where(i, ref), reason) for reason in errs]
        if errs:
            continue
        sent_ids.update(s["sent_id"] for s in ref["sentences"])
        used_images.add(ref["image_id"])
        used_anns.update(target_ann_ids(ref) if multi else [ref["ann_id"]])
    problems += [Problem(str(refs_file), f"sent_id {sid}", f"used by {c} sentences; question ids must be unique")
                 for sid, c in sent_ids.items() if c > 1]
    for a in sorted(used_anns, key=str):
        image = images.get(anns[a]["image_id"])
        if image is None:
            problems.append(Problem(str(instances_file), f"annotation id {a}", "its image_id is not in images"))
            continue
        try:
            decode_mask(anns[a]["segmentation"], image["height"], image["width"])
        except Exception as e:  # MaskDecodeError, or pycocotools on malformed input
            problems.append(Problem(str(instances_file), f"annotation id {a}", f"bad segmentation: {e}"))
    checker = ImageChecker()
    for image_id in sorted(used_images, key=str):
        image = images[image_id]
        reason = checker(image_root / image["file_name"], image["height"], image["width"])
        if reason:
            problems.append(Problem(str(instances_file), f"image id {image_id}", reason))
    return n, problems


def check_refer(root: Path, name: str, split_by: str, image_root: Path | None = None,
                split: str | None = None, progress: bool = False) -> tuple[int, list[Problem]]:
    """(refs checked, problems) for a REFER dataset; never raises on bad data."""
    folder = Path(root) / name
    refs_file = folder / f"refs({split_by}).p"
    try:
        refs = load_refs_pickle(refs_file)
    except DataError as e:
        return 0, [e.problem or Problem(str(refs_file), "-", str(e))]
    image_root = Path(image_root) if image_root is not None else default_image_root(root, name)
    return check_refs(refs, refs_file, folder / "instances.json", image_root, False, split, progress)


def validate_refer(root: Path, name: str, split_by: str, image_root: Path | None = None) -> list[Problem]:
    """Every problem of a REFER dataset (refs pickle, instances.json, masks, images)."""
    return check_refer(root, name, split_by, image_root)[1]
