"""Fidelity and diversity of classifier-guided digits against the gradient scale s."""

import math
from pathlib import Path

from figures.adm_model import guided_digits, per_sample_stats
from refimpl.plots import save, subplots

PAGE = "guidance/classifier-guidance.md"
OUTPUTS = ("adm_tradeoff.svg",)


def make(out: Path, preset: str) -> None:
    samples = guided_digits(preset)
    hit, spread = per_sample_stats(samples)
    scales, n = samples["scales"].tolist(), hit.shape[1]
    fig, (left, right) = subplots(1, 2, figsize=(7.5, 3.0))
    for ax, stat, label in ((left, hit, "accuracy on the requested label"),
                            (right, spread, "within-class feature spread")):
        mean, se = stat.mean(1).numpy(), (stat.std(1) / math.sqrt(n)).numpy()
        ax.errorbar(scales, mean, yerr=2 * se, marker="o", capsize=3)
        ax.set(xscale="symlog", xlabel="gradient scale s", title=label)
        ax.set_xticks(scales, [f"{s:g}" for s in scales])
    left.axhline(0.1, color="gray", ls="--", lw=1)
    left.set_ylim(0, 1.05)
    save(fig, out / "adm_tradeoff.svg")
