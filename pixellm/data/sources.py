"""From a `SourceConfig` to QARecords: one dispatch point over the loaders."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from ..config import ConfigError, DataConfig, SourceConfig
from .errors import Problem
from .records import QARecord

log = logging.getLogger(__name__)

REQUIRED = {
    "custom": ("annotations", "image_root"),
    "muse": ("annotations", "image_root"),
    "vqa": ("annotations", "image_root"),
    "refer": ("root", "name", "split_by"),
    "grefcoco": ("root", "name", "split_by"),
    "semseg": ("root", "name"),
    "reasonseg": ("root",),
    "synthetic": (),
}


def source_name(spec: SourceConfig) -> str:
    """A short human name: `refcoco/unc:val`, `muse:train`, `synthetic:val`."""
    base = spec.name or (Path(spec.annotations).stem if spec.annotations else spec.type)
    detail = f"/{spec.split_by}" if spec.split_by else ""
    return f"{base}{detail}:{spec.split}" if spec.type != "synthetic" else f"synthetic:{spec.split}"


def ensure_synthetic(data: DataConfig) -> Path:
    """Generate the synthetic task once; regenerate when its settings changed."""
    import torch.distributed as td

    from .synthetic import generate_synthetic

    s = data.synthetic
    out = Path(s.dir)
    stamp = out / "settings.json"
    wanted = asdict(s)
    distributed = td.is_available() and td.is_initialized()
    fresh = stamp.is_file() and json.loads(stamp.read_text()) == wanted
    if not fresh and (not distributed or td.get_rank() == 0):  # one writer; the others wait
        stamp.unlink(missing_ok=True)
        generate_synthetic(out, s.num_train, s.num_val, s.num_compositional, size=s.image_size, seed=s.seed,
                           num_vqa=s.num_vqa)
        stamp.write_text(json.dumps(wanted))
    if distributed:
        td.barrier()
    return out


def load_source(spec: SourceConfig, data: DataConfig, *, mode: str = "train", where: str = "data",
                skipped: list[Problem] | None = None) -> list[QARecord]:
    """Records of one configured source. mode: "train" (REFER groups expressions into
    multi-target questions) or "eval" (one question per expression). skipped: when given,
    the custom, MUSE, VQA and ReasonSeg loaders append a malformed record to it and go on (skips.py)
    instead of raising; a source without any usable record raises DataError either way."""
    missing = [k for k in REQUIRED[spec.type] if getattr(spec, k) is None]
    if missing:
        raise ConfigError(f"{where}: a {spec.type} source needs {', '.join(missing)}")
    p = Path
    if spec.type == "synthetic":
        from .custom import load_custom

        root = ensure_synthetic(data)
        return load_custom(root / f"{spec.split}.jsonl", root, source=source_name(spec), skipped=skipped)
    if spec.type == "custom":
        from .custom import load_custom

        return load_custom(p(spec.annotations), p(spec.image_root), source=source_name(spec), skipped=skipped)
    if spec.type == "muse":
        from .muse import load_muse

        return load_muse(p(spec.annotations), p(spec.image_root), spec.split, skipped=skipped)
    if spec.type == "vqa":
        from .vqa import load_vqa

        return load_vqa(p(spec.annotations), p(spec.image_root), skipped=skipped)
    if spec.type == "refer":
        from .refer import load_refer

        image_root = p(spec.image_root) if spec.image_root else None
        return load_refer(p(spec.root), spec.name, spec.split_by, spec.split, image_root=image_root, mode=mode, seed=data.seed)
    if spec.type == "grefcoco":
        from .grefcoco import load_grefcoco

        image_root = p(spec.image_root) if spec.image_root else None
        return load_grefcoco(p(spec.root), spec.name, spec.split_by, spec.split, image_root=image_root)
    if spec.type == "reasonseg":
        from .reasonseg import load_reasonseg

        return load_reasonseg(p(spec.root), spec.split, mode=mode, skipped=skipped)
    from .semseg import load_semseg

    return load_semseg(p(spec.root), spec.name, spec.split, seed=data.seed)
