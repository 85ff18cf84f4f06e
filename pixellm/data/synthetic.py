"""The synthetic multi-target shapes task, written in the custom JSON Lines format.

``pixellm make-synthetic OUT`` (or `generate_synthetic`) writes::

    OUT/train.jsonl  OUT/val.jsonl  OUT/compositional.jsonl
    OUT/images/<split>/000000.png           (RGB, default 64x64)
    OUT/masks/<split>/000000_<object>.png   (L, 255 = the object)

All paths in the JSONL are relative to OUT, so ``load_custom(OUT/train.jsonl, OUT)`` reads it.
Each image gets a few conversations, of three kinds (stored as the extra key "kind"):

- ``targets``: 1-4 shapes named by colour and shape, "Segment the red circle and the blue
  square." -> "The red circle <seg> and the blue square <seg>." (answer order = named order);
- ``relation``: "Segment the shape left of the red circle." (also right of / above / below),
  only when exactly one shape fits under both a strict (box entirely on that side) and a loose
  (centre on that side) reading -> "The blue square <seg>.";
- ``absent`` (about 18%): a shape that is not in the image -> NO_TARGET_ANSWER, no mask.

With ``num_vqa`` > 0 a fourth split, ``vqa``, holds text-only questions (colour, shape, count,
position, existence) about scenes drawn from every pair, the held-out ones included
(`synthetic_vqa`): what a model can learn about the scenes without any mask.

Train and val use SEEN_PAIRS; the compositional split uses only HELD_OUT_PAIRS (see
`synthetic_scene`). Records also carry "objects" (colour, shape, bbox, mask path), which the
custom loader ignores. Output is a function of (counts, size, seed) only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..constants import NO_TARGET_ANSWER, SEG_PLACEHOLDER

if TYPE_CHECKING:  # numpy, PIL, tqdm load when the generator runs, not with the `pixellm` parser
    import numpy as np

    from .synthetic_scene import SceneObject

SPLITS = ("train", "val", "compositional", "vqa")
RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
TEMPLATES = ("Segment the {}.", "Please segment the {}.", "Can you segment the {}?")
P_ABSENT, P_RELATION = 0.18, 0.27
QUESTIONS_PER_IMAGE = 3


def generate_synthetic(out_dir: Path, num_train: int, num_val: int, num_compositional: int, size: int = 64,
                       seed: int = 0, progress: bool = True, num_vqa: int = 0) -> dict[str, Path]:
    """Write the splits under `out_dir` (vqa only when num_vqa > 0); returns {split: path of its JSONL}."""
    import numpy as np
    from tqdm import tqdm

    from .synthetic_scene import HELD_OUT_PAIRS, SEEN_PAIRS

    if min(num_train, num_val, num_compositional, num_vqa) < 0:
        raise ValueError("image counts must be >= 0")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    out_dir = Path(out_dir)
    counts = dict(zip(SPLITS, (num_train, num_val, num_compositional, num_vqa), strict=True))
    if not num_vqa:
        counts.pop("vqa")
    paths = {}
    with tqdm(total=sum(counts.values()), desc="make-synthetic", unit="img", disable=not progress) as bar:
        for split_index, (split, count) in enumerate(counts.items()):
            pairs = {"compositional": sorted(HELD_OUT_PAIRS), "vqa": list(SEEN_PAIRS) + sorted(HELD_OUT_PAIRS)
                     }.get(split, list(SEEN_PAIRS))
            (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
            (out_dir / "masks" / split).mkdir(parents=True, exist_ok=True)
            paths[split] = out_dir / f"{split}.jsonl"
            with open(paths[split], "w", encoding="utf-8") as f:
                for i in range(count):
                    rng = np.random.default_rng([seed, split_index, i])
                    record = _write_image(out_dir, split, i, rng, size, pairs)
                    f.write(json.dumps(record) + "\n")
                    bar.update(1)
    return paths


def _write_image(out_dir: Path, split: str, i: int, rng: np.random.Generator, size: int, pairs: list) -> dict:
    """Render one scene, save image + masks, and return its custom-format record."""
    import numpy as np
    from PIL import Image

    from .synthetic_scene import sample_scene

    image, objects = sample_scene(rng, size, pairs)
    image_rel = f"images/{split}/{i:06d}.png"
    Image.fromarray(image).save(out_dir / image_rel)
    if split == "vqa":  # text only: no masks are written
        from .synthetic_vqa import vqa_conversations

        return {"image": image_rel, "image_id": i, "conversations": vqa_conversations(rng, objects, pairs, size),
                "objects": [{"colour": o.colour, "shape": o.shape, "bbox": list(o.box)} for o in objects]}
    mask_rels = []
    for j, obj in enumerate(objects):
        mask_rels.append(f"masks/{split}/{i:06d}_{j}.png")
        Image.fromarray(obj.mask.astype(np.uint8) * 255).save(out_dir / mask_rels[-1])
    conversations = []
    for conv in make_conversations(rng, objects, pairs):
        targets = conv.pop("targets")
        conv["masks"] = [mask_rels[t] for t in targets]
        conv["phrases"] = [objects[t].name for t in targets]
        conversations.append(conv)
    return {
        "image": image_rel, "image_id": i, "conversations": conversations,
        "objects": [{"colour": o.colour, "shape": o.shape, "bbox": list(o.box), "mask": m}
                    for o, m in zip(objects, mask_rels, strict=True)],
    }


def make_conversations(rng: np.random.Generator, objects: list[SceneObject], pairs: list,
                       count: int = QUESTIONS_PER_IMAGE) -> list[dict]:
    """`count` distinct questions: {"kind", "question", "answer", "targets": [object index]}."""
    present = {(o.colour, o.shape) for o in objects}
    absent = [p for p in pairs if p not in present]
    out, seen = [], set()
    for _ in range(count * 4):
        if len(out) == count:
            break
        r = rng.random()
        conv = None
        if r < P_ABSENT and absent:
            conv = _absent_question(rng, absent)
        elif r < P_ABSENT + P_RELATION:
            conv = _relation_question(rng, objects)
        if conv is None:
            conv = _targets_question(rng, objects)
        if conv["question"] not in seen:
            seen.add(conv["question"])
            out.append(conv)
    return out


def _template(rng: np.random.Generator) -> str:
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))]


def _targets_question(rng: np.random.Generator, objects: list[SceneObject]) -> dict:
    from .semseg import join_phrases

    k = int(rng.integers(1, min(4, len(objects)) + 1))
    targets = [int(t) for t in rng.choice(len(objects), size=k, replace=False)]
    names = [f"the {objects[t].name}" for t in targets]
    answer = join_phrases([f"{n} {SEG_PLACEHOLDER}" for n in names]) + "."
    question = _template(rng).format(join_phrases(names)[len("the "):])
    return {"kind": "targets", "question": question, "answer": answer[0].upper() + answer[1:], "targets": targets}


def _absent_question(rng: np.random.Generator, absent: list) -> dict:
    colour, shape = absent[int(rng.integers(len(absent)))]
    return {"kind": "absent", "question": _template(rng).format(f"{colour} {shape}"),
            "answer": NO_TARGET_ANSWER, "targets": []}


def _relation_question(rng: np.random.Generator, objects: list[SceneObject]) -> dict | None:
    """A relation question with exactly one answer, or None if this scene has none."""
    options = [(a, rel) for a in range(len(objects)) for rel in RELATIONS]
    for k in rng.permutation(len(options)):
        anchor, rel = options[int(k)]
        target = unique_related(objects, anchor, rel)
        if target is not None:
            phrase = f"shape {RELATIONS[rel]} the {objects[anchor].name}"
            return {"kind": "relation", "question": _template(rng).format(phrase),
                    "answer": f"The {objects[target].name} {SEG_PLACEHOLDER}.", "targets": [target]}
    return None


def unique_related(objects: list[SceneObject], anchor: int, rel: str) -> int | None:
    """The single object `rel` ("left", "right", "above", "below") of objects[anchor], or None
    when none or several fit (strictly: box wholly on that side; loosely: centre on that side)."""
    a = objects[anchor]
    strict, loose = [], []
    for i, o in enumerate(objects):
        if i == anchor:
            continue
        if _beyond(o.box, a.box, rel):
            strict.append(i)
        (ox, oy), (ax, ay) = o.centre, a.centre
        if {"left": ox < ax, "right": ox > ax, "above": oy < ay, "below": oy > ay}[rel]:
            loose.append(i)
    return strict[0] if len(strict) == 1 and loose == strict else None


def _beyond(box: tuple, anchor: tuple, rel: str) -> bool:
    """Is `box` wholly on the `rel` side of `anchor` (boxes as x0, y0, x1, y1)?"""
    return {"left": box[2] < anchor[0], "right": box[0] > anchor[2],
            "above": box[3] < anchor[1], "below": box[1] > anchor[3]}[rel]


def register(subparsers) -> None:
    """Add the `make-synthetic` subcommand."""
    p = subparsers.add_parser(
        "make-synthetic", help="write the synthetic shapes dataset (custom JSONL format)",
        description="Write OUT_DIR/{train,val,compositional}.jsonl with images and PNG masks.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--train", type=int, default=1000, help="train images (default 1000)")
    p.add_argument("--val", type=int, default=100, help="val images (default 100)")
    p.add_argument("--compositional", type=int, default=100, help="held-out-pair images (default 100)")
    p.add_argument("--vqa", type=int, default=0, help="text-only VQA images, every pair (default 0)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64, min 32)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        paths = generate_synthetic(args.out_dir, args.train, args.val, args.compositional,
                                   size=args.size, seed=args.seed, num_vqa=args.vqa)
    except ValueError as e:
        raise SystemExit(f"pixellm make-synthetic: error: {e}") from None
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0
