"""`--dataset NAME:SPLIT` -> a data source, its scoring protocol and its evaluation modes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, SourceConfig

REFER_NAMES = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc"}


@dataclass(frozen=True)
class EvalDataset:
    """One split to evaluate. modes: "generated" (the model writes its answer) and/or
    "teacher_forced" (the answer with its codebook group is given; the RefCOCO peers' protocol)."""

    name: str
    source: SourceConfig
    protocol: str
    modes: tuple[str, ...]
    per: str | None = None  # averaging unit (evaluation.units); None: the protocol's default


def parse_dataset(text: str, *, data_root: str = "data", image_root: str | None = None, protocol: str = "both",
                  per: str = "expression") -> EvalDataset:
    """Dataset names: synthetic:SPLIT, muse:{val,test_less,test_many},
    refcoco|refcoco+|refcocog|refclef[@SPLITBY]:SPLIT, grefcoco:SPLIT, reasonseg:{val,test},
    custom:PATH.jsonl, joint:PATH.jsonl (VQA + grounding items, data.joint; protocol "joint").

    Paths follow the README layout under `data_root`; `image_root` overrides the image folder.
    `per` ("expression" or "instance") is the averaging unit of the REFER family (others keep theirs).
    """
    if ":" not in text:
        raise ConfigError(f"--dataset {text!r}: expected NAME:SPLIT, e.g. refcoco:val or synthetic:val")
    name, split = text.split(":", 1)
    root = Path(data_root)
    both = ("teacher_forced", "generated") if protocol == "both" else (protocol,)
    if name == "synthetic":
        return EvalDataset(text, SourceConfig(type="synthetic", split=split), "custom", ("generated",))
    if name == "muse":
        src = SourceConfig(type="muse", annotations=str(root / "muse" / f"muse_{split}.json"),
                           image_root=image_root or str(root / "coco"), split=split)
        return EvalDataset(text, src, "muse", ("generated",))
    if name == "reasonseg":
        src = SourceConfig(type="reasonseg", root=str(root / "reasonseg"), name="reasonseg", split=split)
        return EvalDataset(text, src, "reasonseg", ("generated",))
    if name == "custom":
        path = Path(split)
        src = SourceConfig(type="custom", annotations=str(path), image_root=image_root or str(path.parent), split=path.stem)
        return EvalDataset(f"custom:{path.stem}", src, "custom", ("generated",))
    if name == "joint":  # evaluation-only items, read by data.joint.load_joint (not a training source type)
        path = Path(split)
        src = SourceConfig(type="custom", annotations=str(path), image_root=image_root or str(path.parent), split=path.stem)
        return EvalDataset(f"joint:{path.stem}", src, "joint", ("generated",))
    base, _, split_by = name.partition("@")
    if base in REFER_NAMES or base == "grefcoco":
        kind = "grefcoco" if base == "grefcoco" else "refer"
        src = SourceConfig(type=kind, root=str(root / "refer_seg"), name=base,
                           split_by=split_by or REFER_NAMES.get(base, "unc"), split=split, image_root=image_root)
        return EvalDataset(text, src, kind, both, per if kind == "refer" else None)
    raise ConfigError(f"--dataset {text!r}: unknown dataset {base!r}")
