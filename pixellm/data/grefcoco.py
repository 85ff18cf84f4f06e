"""gRefCOCO loader and validator (generalized referring expressions: zero, one or many targets).

Layout: `<root>/<name>/grefs(<split_by>).json` (JSON list of refs with `ref_id`, `image_id`,
`ann_id` (list of annotation ids; `[-1]` or `[]` = no target), optional `no_target`, `split`,
`sentences` [{`sent`, `sent_id`}]) and `<root>/<name>/instances.json` (COCO).
gRefCOCO scores a multi-object expression as ONE mask, the union of its annotations, so every
record here has exactly one mask (or none for a no-target expression).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..constants import NO_TARGET_ANSWER
from .errors import DataError, Problem
from .jsonio import read_json_list
from .masks import decode_mask, encode_rle
from .records import MaskSpec, QARecord
from .refer import (
    EVAL_ANSWER,
    check_refs,
    default_image_root,
    load_instances,
    target_ann_ids,
    valid_refs,
)


def union_mask_spec(segs: list[MaskSpec], height: int, width: int) -> MaskSpec:
    """Several annotations' segmentations -> one MaskSpec covering their union.

    One part: returned as is. All polygons: the concatenated polygon list (decode_mask merges
    parts). Otherwise: the parts are decoded at (height, width), OR-ed and re-encoded as one
    compressed RLE {"size": [h, w], "counts": str}. Raises MaskDecodeError on a bad part.
    """
    if len(segs) == 1:
        return segs[0]
    if all(isinstance(s, list) for s in segs):
        return [poly for s in segs for poly in s]
    union = np.zeros((height, width), dtype=bool)
    for s in segs:
        union |= decode_mask(s, height, width)
    return encode_rle(union)


def _records(refs: list[dict], images: dict, anns: dict, image_root: Path, path: Path) -> list[QARecord]:
    out = []
    for ref in refs:
        image = images[ref["image_id"]]
        ann_ids = target_ann_ids(ref)
        try:
            masks = [union_mask_spec([anns[a]["segmentation"] for a in ann_ids],
                                     image["height"], image["width"])] if ann_ids else []
        except (ValueError, TypeError) as e:  # MaskDecodeError, malformed RLE
            raise DataError(Problem(str(path), f"ref_id {ref['ref_id']}", f"bad segmentation: {e}")) from None
        for s in ref["sentences"]:
            out.append(QARecord(
                source="grefcoco", image_path=image_root / image["file_name"], image_id=ref["image_id"],
                question_id=str(s["sent_id"]), question=s["sent"],
                answer=EVAL_ANSWER if masks else NO_TARGET_ANSWER, masks=list(masks),
                phrases=[s["sent"]] if masks else [], height=image["height"], width=image["width"],
                extra={"phrase": s["sent"], "ref_id": ref["ref_id"], "ann_ids": ann_ids,
                       "sent_id": s["sent_id"], "no_target": not masks},
            ))
    return out


def load_grefcoco(root: Path, name: str = "grefcoco", split_by: str = "unc", split: str = "val",
                  image_root: Path | None = None) -> list[QARecord]:
    """One QARecord per sentence of `split`; question_id = str(sent_id).

    Targets: masks = [union of the ref's annotations] with answer "It is <seg>.", or masks = []
    with NO_TARGET_ANSWER and extra["no_target"] = True. Raises DataError on malformed data.
    """
    folder = Path(root) / name
    refs_file = folder / f"grefs({split_by}).json"
    images, anns = load_instances(folder / "instances.json")
    refs = valid_refs(read_json_list(refs_file), refs_file, images, anns, split, multi=True)
    image_root = Path(image_root) if image_root is not None else default_image_root(root, name)
    return _records(refs, images, anns, image_root, refs_file)


def check_grefcoco(root: Path, name: str = "grefcoco", split_by: str = "unc", image_root: Path | None = None,
                   split: str | None = None, progress: bool = False) -> tuple[int, list[Problem]]:
    """(refs checked, problems) for a gRefCOCO dataset; never raises on bad data."""
    folder = Path(root) / name
    refs_file = folder / f"grefs({split_by}).json"
    try:
        refs = read_json_list(refs_file)
    except DataError as e:
        return 0, [e.problem or Problem(str(refs_file), "-", str(e))]
    image_root = Path(image_root) if image_root is not None else default_image_root(root, name)
    return check_refs(refs, refs_file, folder / "instances.json", image_root, True, split, progress)


def validate_grefcoco(root: Path, name: str = "grefcoco", split_by: str = "unc",
                      image_root: Path | None = None) -> list[Problem]:
    """Every problem of a gRefCOCO dataset (grefs JSON, instances.json, masks, images)."""
    return check_grefcoco(root, name, split_by, image_root)[1]
