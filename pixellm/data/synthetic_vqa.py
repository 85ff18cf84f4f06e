"""Text-only questions about a synthetic scene: the VQA variant of the shapes task.

Every answer names the objects it is about by colour and shape ("the purple circle"), for every
colour-shape pair, the held-out ones included: the VQA split is drawn from all pairs, so a model
trained on it hears the names the mask data never uses. No masks: it stands in for the
LLaVA-Instruct part of the real mixture (issue 17: does grounding emerge without masks?).

Kinds (stored as "kind"): ``colour`` (a shape that is alone of its kind), ``shape`` (a colour
alone of its kind), ``count``, ``position`` (thirds of the image: top/middle/bottom,
left/centre/right, from the object's centre) and ``exists`` (half present, half absent pairs).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .synthetic_scene import SceneObject

KINDS = ("colour", "shape", "count", "position", "exists")
ROWS, COLS = ("top", "middle", "bottom"), ("left", "centre", "right")


def position_words(obj: SceneObject, size: int) -> str:
    """'top left', 'middle centre', ...: the thirds of the image holding the object's centre."""
    x, y = obj.centre
    return f"{ROWS[min(2, int(3 * y / size))]} {COLS[min(2, int(3 * x / size))]}"


def names(objects: list[SceneObject]) -> str:
    """'the red circle, the blue square and the green cross'."""
    from .semseg import join_phrases

    return join_phrases([f"the {o.name}" for o in objects])


def _alone(rng: np.random.Generator, objects: list[SceneObject], attr: str) -> SceneObject | None:
    """A random object whose `attr` ("colour" or "shape") no other object of the scene shares."""
    counts = Counter(getattr(o, attr) for o in objects)
    alone = [o for o in objects if counts[getattr(o, attr)] == 1]
    return alone[int(rng.integers(len(alone)))] if alone else None


def vqa_question(kind: str, rng: np.random.Generator, objects: list[SceneObject], pairs: list,
                 size: int) -> dict | None:
    """One {"kind", "question", "answer"} of `kind` about the scene, or None if the scene has none."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    if kind in ("colour", "shape"):  # ask for the attribute of an object alone in the other one
        o = _alone(rng, objects, "shape" if kind == "colour" else "colour")
        if o is None:
            return None
        if kind == "colour":
            return {"question": f"What colour is the {o.shape}?", "answer": f"It is {o.colour}: the {o.name}."}
        return {"question": f"What shape is the {o.colour} object?", "answer": f"It is a {o.shape}: the {o.name}."}
    if kind == "count":
        return {"question": "How many shapes are there?",
                "answer": f"There are {len(objects)} shapes: {names(objects)}."}
    if kind == "position":
        o = pick(objects)
        return {"question": f"Where is the {o.name}?", "answer": f"The {o.name} is at the {position_words(o, size)}."}
    present = {(o.colour, o.shape) for o in objects}
    absent = [p for p in pairs if p not in present]
    if absent and rng.random() < 0.5:
        colour, shape = pick(absent)
        return {"question": f"Is there a {colour} {shape}?", "answer": f"No, there is no {colour} {shape}."}
    o = pick(objects)
    return {"question": f"Is there a {o.name}?", "answer": f"Yes, the {o.name} is at the {position_words(o, size)}."}


def vqa_conversations(rng: np.random.Generator, objects: list[SceneObject], pairs: list, size: int,
                      count: int = 3) -> list[dict]:
    """`count` distinct text-only conversations about the scene (kinds drawn uniformly)."""
    out, seen = [], set()
    for _ in range(count * 6):
        if len(out) == count:
            break
        kind = KINDS[int(rng.integers(len(KINDS)))]
        conv = vqa_question(kind, rng, objects, pairs, size)
        if conv is not None and conv["question"] not in seen:
            seen.add(conv["question"])
            out.append({"kind": kind, **conv})
    return out
