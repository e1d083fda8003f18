"""DreamBooth's slant: histograms of refimpl.styles.skew for the class prompt and the identifier prompt, base model
vs fine-tuned with and without prior preservation, beside the subject's five images."""

from pathlib import Path

import numpy as np

from figures.zoo.dreambooth import evaluation
from refimpl.plots import save, subplots
from refimpl.styles import skew

PAGE = "finetuning/dreambooth.md"
OUTPUTS = ("dreambooth_skew.svg",)
PANELS = (("“the digit sks three”", (("prior_instance", "λ = 1", "C0"), ("no_prior_instance", "λ = 0", "C3"))),
          ("“the digit three”", (("prior_class", "λ = 1", "C0"), ("no_prior_class", "λ = 0", "C3"))))


def make(out: Path, preset: str) -> None:
    samples = evaluation(preset)
    bins = np.linspace(-0.5, 0.9, 29)
    fig, axes = subplots(1, 2, figsize=(8, 3), sharey=True)
    for ax, (title, rows) in zip(axes, PANELS):
        ax.hist(skew(samples["base_class"]).numpy(), bins=bins, color="0.6", alpha=0.6, label="base, “three”")
        for key, label, color in rows:
            ax.hist(skew(samples[key]).numpy(), bins=bins, histtype="step", color=color, lw=1.5, label=label)
        for value in skew(samples["subject"]).numpy():
            ax.axvline(value, color="k", lw=0.8, ls=":")
        ax.set_title(title)
        ax.set_xlabel("skew (slant; dotted: the subject's 5 images)")
    axes[0].set_ylabel(f"samples (of {samples['base_class'].shape[0]})")
    axes[0].legend(frameon=False, fontsize=8)
    save(fig, out / "dreambooth_skew.svg")
