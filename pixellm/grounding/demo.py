"""`make grounding-demo` (`python -m pixellm.grounding.demo`): does grounding emerge without masks?

On the synthetic shapes task (4000 mask images + `--vqa-images` text-only VQA images that name
every colour-shape pair, the held-out ones included):

1. the demo PixelLM (`make demo`'s config and steps), unless `--pixellm DIR` gives a trained one;
2. the same tiny LLaVA trained on the VQA split alone (no masks, same steps);
3. `pixellm probe-grounding` of both on synthetic:val and synthetic:compositional: PointAcc per
   LLM layer of the phrase's attention, the attention mask's IoU, chance, the PixelLM decoder;
4. with `--mix W`: the demo again with the VQA split mixed in at weight W (the mask split has
   weight 1), to see whether hearing the held-out names lifts the compositional split.

Writes OUT/summary.json, OUT/{val,compositional}/grounding.{json,png}. Every figure is a
function of the steps (no wall-clock dependence); about 10 minutes per training run on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/tiny_synthetic.yaml"


def _run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def _data(out: Path, vqa_images: int) -> list[str]:
    return [f"data.synthetic.dir={out / 'synthetic'}", f"data.synthetic.num_vqa={vqa_images}"]


def train_pixellm(out: Path, data: list[str], extra: list[str]) -> dict:
    """`make demo` into `out` (train, evaluate, export); its metrics.json."""
    _run([sys.executable, "-m", "pixellm.demo", f"train.output_dir={out}", f"eval.output_dir={out / 'eval'}",
          *data, *extra])
    return json.loads((out / "metrics.json").read_text())


def train_vqa_llava(out: Path, data: list[str], extra: list[str]) -> Path:
    """The demo's model and steps on the VQA split alone (no validation: it has no masks)."""
    _run([sys.executable, "train.py", CONFIG, "train.overwrite=true", f"train.output_dir={out}",
          "data.train=[{type: synthetic, split: vqa}]", "data.val=[]", *data, *extra])
    _run([sys.executable, "-m", "pixellm", "export", str(out), str(out / "export")])
    return out / "export"


def probe(models: list[Path], attention_only: list[Path], split: str, out: Path, data: list[str], limit: int) -> dict:
    cmd = [sys.executable, "-m", "pixellm", "probe-grounding", *map(str, models), "--dataset", f"synthetic:{split}",
           "--out", str(out), "--limit-images", str(limit)]
    for m in attention_only:
        cmd += ["--attention-only", str(m)]
    for d in data:
        cmd += ["--set", d]
    _run(cmd)
    return json.loads((out / "grounding.json").read_text())


def _brief(doc: dict) -> dict:
    """The headline figures of a probe, per model."""
    return {name: {"point_acc_per_layer": [x["point_acc"] for x in r["layers"]], "aggregate": r["aggregate"],
                   "chance_point_acc": r["chance_point_acc"], "decoder": r["decoder"],
                   "when": {k: r["when"][k] for k in ("oracle_point_acc", "auto", "histogram", "oracle_words")}
                   if "when" in r else None}
            for name, r in doc["models"].items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted overrides for every training run (e.g. train.max_steps=200)")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "grounding_demo")
    p.add_argument("--vqa-images", type=int, default=4000)
    p.add_argument("--pixellm", type=Path, default=None, help="a trained demo PixelLM (run or export) to reuse")
    p.add_argument("--mix", type=float, default=None, metavar="W", help="also train the demo with the VQA split at weight W")
    p.add_argument("--limit-images", type=int, default=50, help="images probed per split")
    args = p.parse_args(argv)
    out = args.out.resolve()
    # the synthetic task's settings go to every step (a probe with other settings would regenerate it)
    data = _data(out, args.vqa_images) + [o for o in args.overrides if o.startswith("data.synthetic.")]
    summary: dict = {"vqa_images": args.vqa_images, "overrides": args.overrides}
    pixellm = args.pixellm
    if pixellm is None:
        summary["pixellm_metrics"] = train_pixellm(out / "pixellm", data, args.overrides)
        pixellm = out / "pixellm" / "export"
    vqa = train_vqa_llava(out / "vqa_llava", data, args.overrides)
    models = [Path(pixellm), vqa]
    for split in ("val", "compositional"):
        summary[split] = _brief(probe(models, [vqa], split, out / split, data, args.limit_images))
    if args.mix is not None:
        mix = [f"data.train=[{{type: synthetic, split: train, weight: 1.0}}, {{type: synthetic, split: vqa, weight: {args.mix}}}]"]
        summary["mix"] = {"weight": args.mix, "metrics": train_pixellm(out / "mix", data, [*mix, *args.overrides])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(json.dumps(summary, indent=1))
    print(f"wrote {out / 'summary.json'}, {out / 'val' / 'grounding.png'}, {out / 'compositional' / 'grounding.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
