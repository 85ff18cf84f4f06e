"""`make demo`: the main job end to end on the embedded synthetic task, on a CPU.

Generates the task, trains the tiny preset through train.py (DeepSpeed), evaluates generated
answers on val and the held-out compositional split with evaluate.py, exports the model,
renders colour overlays, and writes outputs/demo/metrics.json with a short table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiny_synthetic.yaml"


def _run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def _overlays(model_dir: Path, data_dir: Path, out: Path, n: int) -> list[Path]:
    from PIL import Image

    from .data.custom import load_custom
    from .data.images import read_image
    from .predictor import PixelLMPredictor
    from .visualize import overlay

    predictor = PixelLMPredictor.from_pretrained(model_dir)
    paths = []
    for i, rec in enumerate(load_custom(data_dir / "val.jsonl", data_dir)[:n]):
        image = read_image(rec.image_path)
        pred = predictor.predict(image, rec.question, max_new_tokens=48)
        big = image.resize((image.width * 4, image.height * 4), Image.NEAREST)
        masks = [Image.fromarray(s.mask).resize(big.size, Image.NEAREST) for s in pred.segments]
        import numpy as np

        canvas = overlay(big, [np.asarray(m) for m in masks], [s.phrase for s in pred.segments],
                         title=f"Q: {rec.question}  A: {pred.text}")
        path = out / f"overlay_{i}.png"
        canvas.save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("overrides", nargs="*", help="dotted overrides for the demo config")
    args = p.parse_args(argv)
    from .config import load_config
    from .evaluation.report import format_table

    cfg = load_config(REPO / CONFIG, args.overrides)
    out = REPO / cfg.train.output_dir
    start = time.time()
    _run([sys.executable, "train.py", CONFIG, "train.overwrite=true", *args.overrides])  # always from scratch
    train_seconds = time.time() - start
    evaluation = out / "eval"
    _run([sys.executable, "evaluate.py", str(out), "--dataset", "synthetic:val", "--dataset",
          "synthetic:compositional", "--out", str(evaluation), *args.overrides])
    _run([sys.executable, "-m", "pixellm", "export", str(out), str(out / "export")])
    summary = json.loads((evaluation / "summary.json").read_text())
    metrics = {"val": summary["synthetic:val"], "compositional": summary["synthetic:compositional"],
               "train_seconds": round(train_seconds, 1)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    overlays = _overlays(out / "export", REPO / cfg.data.synthetic.dir, out, n=6)
    print()
    print(format_table({"val": metrics["val"], "compositional": metrics["compositional"]}))
    print(f"train_seconds: {metrics['train_seconds']}  (targets: val gIoU >= 0.80, count_acc >= 0.95)")
    print(f"wrote {out / 'metrics.json'} and {len(overlays)} overlays in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
