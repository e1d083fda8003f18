"""DreamBooth's slant: histograms of refimpl.styles.skew for the class prompt and the identifier prompt, base model
vs fine-tuned with and without prior preservation, beside the subject's five images."""

from pathlib import Path

import numpy as np

from figures.zoo.dreambooth import evaluation
from refimpl.plots import save, subplots
from refimpl.styles import skew

PAGE = "finetuning/dreambooth.md"
OUTPUTS = ("dreambooth_skew.svg",)
PANELS = (("提示 “the digit sks three”", (("prior_instance", "λ = 1", "C0"), ("no_prior_instance", "λ = 0", "C3"))),
          ("提示 “the digit three”", (("prior_class", "λ = 1", "C0"), ("no_prior_class", "λ = 0", "C3"))))


def make(out: Path, preset: str) -> None:
    samples = evaluation(preset)
    bins = np.linspace(-0.5, 0.9, 29)
    fig, axes = subplots(1, 2, figsize=(7.6, 3.2), sharey=True)
    for ax, (title, rows) in zip(axes, PANELS):
        ax.hist(skew(samples["base_class"]).numpy(), bins=bins, color="0.6", alpha=0.6, label="基座，“three”")
        for key, label, color in rows:
            ax.hist(skew(samples[key]).numpy(), bins=bins, histtype="step", color=color, lw=1.5, label=label)
        for value in skew(samples["subject"]).numpy():
            ax.axvline(value, color="k", lw=0.8, ls=":")
        ax.set_title(title)
        ax.set_xlabel("倾斜度 skew（点线：主体的 5 张图）")
    axes[0].set_ylabel(f"样本数（共 {samples['base_class'].shape[0]} 个）")
    axes[0].legend(frameon=False, handlelength=1.5)
    save(fig, out / "dreambooth_skew.svg")
