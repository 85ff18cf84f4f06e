"""ReasonSeg (LISA's reasoning-segmentation benchmark) in LISA's layout.

    <root>/{train,val,test}/<stem>.jpg   with   <stem>.json:
    {"text": ["query", ...], "is_sentence": bool, "shapes": [{"label": str, "points": [[x, y], ...]}, ...]}

Ground truth, built as LISA builds it (`ground_truth`): shapes labelled "flag" (any case) are
skipped; points are truncated to int; each polygon covers its interior and its outline
(cv2.fillPoly + cv2.polylines, thickness 1); polygons are sorted by that filled area, largest
first, and drawn in that order, value 255 for a label containing "ignore" (any case) and 1
otherwise, so a smaller polygon drawn later wins where they overlap. Pixels of value 255 are
left out of intersection and union when scoring, and count as background in training.

Records: `image_id` = `<stem>`, `question_id` = `"<stem>:<text index>"`; the target is one mask
(the pixels of value 1, compressed RLE) and `extra["ignore"]` holds the 255 pixels (compressed
RLE) and `extra["is_sentence"]` the query kind. Training (`mode="train"`) uses every query of
every image; evaluation (`mode="eval"`) the first query of each image as LISA's validation does
(`all_queries=True`: every query). An image whose ground truth has no target pixel (only
`ignore`/`flag` shapes) is a bad training record (reported through `skipped`) and, in
evaluation, a question with an empty ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..constants import SEG_PLACEHOLDER
from .errors import DataError, Problem
from .masks import encode_rle
from .records import QARecord

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SHORT_QUESTION = "What is {text} in this image? Please output segmentation mask."
LONG_QUESTION = "{text} Please output segmentation mask."
ANSWER = f"It is {SEG_PLACEHOLDER}."
IGNORE = 255


def polygon_mask(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W) uint8, 1 on the polygon's interior and its 1-pixel outline (cv2, as LISA draws it)."""
    import cv2

    mask = np.zeros((h, w), dtype=np.uint8)
    pts = [points.astype(np.int32).reshape(-1, 1, 2)]
    cv2.fillPoly(mask, pts, 1)
    cv2.polylines(mask, pts, True, 1, 1)
    return mask


def ground_truth(shapes: list[dict], h: int, w: int) -> np.ndarray:
    """(H, W) uint8 ground truth of one image: 0 background, 1 target, 255 ignore (module
    docstring). `shapes` must have passed `shape_problems`."""
    drawn = []
    for shape in shapes:
        label = str(shape.get("label", ""))
        if label.lower() == "flag":
            continue
        points = np.asarray(shape["points"], dtype=np.float64).astype(np.int64)  # truncation, as int()
        area = polygon_mask(points, h, w)
        value = IGNORE if "ignore" in label.lower() else 1
        drawn.append((int(area.sum()), value, area))
    gt = np.zeros((h, w), dtype=np.uint8)
    for _, value, area in sorted(drawn, key=lambda d: d[0], reverse=True):  # stable: file order on ties
        gt[area > 0] = value
    return gt


def shape_problems(data: object, path: Path) -> list[Problem]:
    """Everything wrong with one annotation file's content (empty when usable)."""
    f = str(path)
    if not isinstance(data, dict):
        return [Problem(f, "-", f"expected a JSON object, got {type(data).__name__}")]
    problems = []
    text = data.get("text")
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, list) or not text or not all(isinstance(t, str) and t.strip() for t in text):
        problems.append(Problem(f, "text", "missing or empty: expected a non-empty list of non-empty queries"))
    if not isinstance(data.get("is_sentence"), bool):
        problems.append(Problem(f, "is_sentence", f"expected true or false, got {data.get('is_sentence')!r}"))
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        return problems + [Problem(f, "shapes", "missing or not a list")]
    for i, shape in enumerate(shapes):
        where = f"shapes[{i}]"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            problems.append(Problem(f, where, "expected an object with a string `label`"))
            continue
        if shape["label"].lower() == "flag":
            continue
        problems += _points_problems(shape.get("points"), f, where)
    return problems


def _points_problems(points: object, f: str, where: str) -> list[Problem]:
    if not isinstance(points, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and np.isfinite(v) for v in p)
        for p in points
    ):
        return [Problem(f, f"{where}.points", "expected a list of [x, y] number pairs")]
    if len(points) < 3:
        return [Problem(f, f"{where}.points", f"a polygon needs at least 3 points, got {len(points)}")]
    return []


def _queries(data: dict) -> list[str]:
    text = data["text"]
    return [text] if isinstance(text, str) else list(text)


def split_dir(root: Path, split: str) -> Path:
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(Problem(str(folder), "folder", f"not found (ReasonSeg split {split!r} under {root})"))
    return folder


def annotation_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


def image_for(json_path: Path) -> Path | None:
    """The image next to `<stem>.json` (`<stem>.jpg`, or .jpeg/.png), None when missing."""
    for suffix in IMAGE_SUFFIXES:
        candidate = json_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def read_annotation(json_path: Path) -> tuple[dict | None, Path | None, list[Problem]]:
    """(content, image path, problems) of one annotation file; content is None when unusable."""
    problems = []
    image = image_for(json_path)
    if image is None:
        problems.append(Problem(str(json_path), "image", f"no {json_path.stem}.jpg (or .jpeg/.png) beside it"))
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, image, problems + [Problem(str(json_path), "-", f"not readable JSON: {e}")]
    problems += shape_problems(data, json_path)
    return (None if problems else data), image, problems


def records_of(json_path: Path, data: dict, image: Path, queries: list[int]) -> list[QARecord]:
    """The QARecords of one image's chosen queries (indices into `text`)."""
    from .images import image_size

    h, w = image_size(image)
    gt = ground_truth(data["shapes"], h, w)
    target = gt == 1
    masks = [encode_rle(target)] if target.any() else []
    extra = {"ignore": encode_rle(gt == IGNORE), "is_sentence": data["is_sentence"]}
    texts = _queries(data)
    out = []
    for i in queries:
        template = LONG_QUESTION if data["is_sentence"] else SHORT_QUESTION
        out.append(QARecord(
            source=f"reasonseg:{json_path.parent.name}", image_path=image, image_id=json_path.stem,
            question_id=f"{json_path.stem}:{i}", question=template.format(text=texts[i].strip()),
            answer=ANSWER if masks else "There is no such object in the image.", masks=masks,
            phrases=[texts[i].strip()] if masks else [], height=h, width=w, extra=dict(extra),
        ))
    return out


def load_reasonseg(root: Path, split: str, *, mode: str = "train", all_queries: bool = False,
                   skipped: list[Problem] | None = None) -> list[QARecord]:
    """QARecords of `<root>/<split>` (module docstring). A bad file raises DataError, or with
    `skipped` is appended there and left out; a split without any usable record raises."""
    folder = split_dir(root, split)
    files = annotation_files(folder)
    records: list[QARecord] = []
    for json_path in files:
        data, image, problems = read_annotation(json_path)
        if data is not None:
            queries = list(range(len(_queries(data)))) if mode == "train" or all_queries else [0]
            found = records_of(json_path, data, image, queries)
            if mode == "train" and not found[0].masks:
                problems = [Problem(str(json_path), "shapes", "no target pixel (only ignore/flag shapes): "
                                    "nothing to train on")]
            else:
                records += found
        if problems:
            if skipped is None:
                raise DataError(problems[0])
            skipped += problems
    if not records:
        raise DataError(Problem(str(folder), "-", f"no usable ReasonSeg record among {len(files)} annotation files"))
    return records


def check_reasonseg(root: Path, split: str = "val") -> tuple[int, list[Problem]]:
    """(annotation files checked, problems) for `validate-data reasonseg`; every bad file named."""
    folder = split_dir(root, split)
    files = annotation_files(folder)
    problems: list[Problem] = []
    for json_path in files:
        problems += read_annotation(json_path)[2]
    listed = {p.stem for p in files}
    problems += [Problem(str(p), "-", f"image without {p.stem}.json")
                 for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in listed]
    if not files:
        problems.append(Problem(str(folder), "-", "no <stem>.json annotation files"))
    return len(files), problems
