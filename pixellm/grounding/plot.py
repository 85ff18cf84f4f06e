"""grounding.png: PointAcc per LLM layer (one line per model, chance dashed) and, when the
generated-answer analysis ran, the histogram of the oracle tokens' relative positions."""

from __future__ import annotations

from pathlib import Path


def plot_grounding(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    models = doc["models"]
    when = any("when" in r for r in models.values())
    fig, axes = plt.subplots(1, 2 if when else 1, figsize=(11 if when else 6, 4), squeeze=False)
    ax = axes[0, 0]
    for i, (label, r) in enumerate(models.items()):
        layers = [x["layer"] for x in r["layers"]]
        ax.plot(layers, [x["point_acc"] or 0.0 for x in r["layers"]], marker="o", label=label, color=f"C{i}")
        if r["chance_point_acc"] is not None:
            ax.axhline(r["chance_point_acc"], linestyle="--", linewidth=0.8, color=f"C{i}")
        if r.get("decoder") and r["decoder"]["gIoU"] is not None:
            ax.axhline(r["decoder"]["gIoU"], linestyle=":", linewidth=1.2, color=f"C{i}")
    ax.set_xticks(sorted({x["layer"] for r in models.values() for x in r["layers"]}))
    ax.set(xlabel="LLM layer", ylabel="PointAcc", ylim=(0, 1.02),
           title=f"{doc['dataset']}: attention peak in the mask\n(dashed: chance; dotted: decoder gIoU)")
    ax.legend(fontsize=8)
    if when:
        ax = axes[0, 1]
        for i, (label, r) in enumerate(models.items()):
            h = r.get("when", {}).get("histogram")
            if h:
                centres = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
                ax.bar([c + 0.02 * i for c in centres], h["counts"], width=0.08, alpha=0.6, label=label, color=f"C{i}")
        ax.set(xlabel="relative position in the answer (0 = start)", ylabel="targets",
               title="oracle token: where in its own answer a model grounds")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
