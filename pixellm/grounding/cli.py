"""`pixellm probe-grounding MODEL [MODEL ...] --dataset NAME:SPLIT --out DIR`: emergent grounding
of one or more models on a split; writes DIR/grounding.json and DIR/grounding.png.

MODEL: a llava-hf checkpoint folder (no segmentation training: attention only), an exported
PixelLM folder or a training run (attention and the decoder's masks), or a YAML config.
Light to import: torch and the model code load when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe-grounding", help="where answer tokens attend: PointAcc per LLM layer vs the decoder's masks",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="llava-hf folder, PixelLM folder / run, or YAML config")
    p.add_argument("--dataset", required=True, metavar="NAME:SPLIT",
                   help="refcoco:val, grefcoco:val, muse:val, reasonseg:val, synthetic:val, custom:FILE.jsonl")
    p.add_argument("--data-root", default="data")
    p.add_argument("--image-root", default=None)
    p.add_argument("--limit-images", type=int, default=None, metavar="N", help="only the first N images")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--layers", type=_ints, default=None, metavar="0,1,...",
                   help="LLM layers aggregated for the overall figures (default: all)")
    p.add_argument("--heads", type=_ints, default=None, metavar="0,1,...", help="heads averaged (default: all)")
    p.add_argument("--no-normalise", action="store_true", help="raw attention (no mean-map subtraction)")
    p.add_argument("--attention-only", action="append", default=[], metavar="MODEL",
                   help="a MODEL whose codebook and decoder never saw a mask (e.g. trained on VQA only): "
                   "probe its attention, leave its decoder out")
    p.add_argument("--sam", default=None, metavar="DIR",
                   help="a transformers SamModel folder (e.g. facebook/sam-vit-huge saved locally): also segment "
                   "from the aggregated attention peak, as attend-and-segment does")
    p.add_argument("--no-when", action="store_true", help="skip the generated-answer (oracle token) analysis")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="config override for every model, e.g. data.synthetic.dir=...")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="weights dtype (auto: bf16/fp16 on CUDA, fp32 on CPU); attention maps are kept in fp32")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..data.errors import DataError

    try:
        result = probe_models(args)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    out = Path(args.out)
    print(json.dumps({k: {"aggregate": v["aggregate"], "decoder": v["decoder"], "chance": v["chance_point_acc"]}
                      for k, v in result["models"].items()}, indent=1))
    print(f"wrote {out / 'grounding.json'} and {out / 'grounding.png'}")
    return 0


def probe_models(args: argparse.Namespace) -> dict:
    """Probe each model on the split; write grounding.json and grounding.png; return the JSON."""
    import torch
    from tqdm import tqdm

    from ..evaluation.datasets import parse_dataset
    from ..evaluation.score import gt_masks, image_size
    from ..precision import resolve_dtype
    from ..predictor import PixelLMPredictor
    from .loading import load_probe_model, probe_records
    from .plot import plot_grounding
    from .probe import GroundingProbe, ProbeSettings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = ProbeSettings(layers=args.layers, heads=args.heads, normalise=not args.no_normalise,
                             when=not args.no_when, max_new_tokens=args.max_new_tokens, sam=args.sam)
    ds = parse_dataset(args.dataset, data_root=args.data_root, image_root=args.image_root)
    results, labels = {}, _labels(args.models)
    for label, path in zip(labels, args.models):
        model, cfg, codebook = load_probe_model(path, args.overrides, device, resolve_dtype(args.dtype, device))
        codebook = codebook and path not in args.attention_only
        records = probe_records(ds, cfg, args.limit_images)
        probe = GroundingProbe(PixelLMPredictor(model), settings, codebook)
        for record in tqdm(records, desc=f"probe {label}", unit="question"):
            probe.add(record, gt_masks(record, image_size(record)))
        results[label] = {"model": str(path), "codebook": codebook, "num_questions": len(records), **probe.result()}
        del model, probe
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"dataset": args.dataset, "models": results}
    (out / "grounding.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    plot_grounding(doc, out / "grounding.png")
    return doc


def _labels(models: list[str]) -> list[str]:
    """A short unique label per model: its folder name (the run's for a run's export/ folder),
    numbered if two are the same."""
    names = [(Path(m).parent.name if Path(m).name == "export" else Path(m).name) or str(m) for m in models]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
