"""LDM samples for the captions "the digit k": DDIM in latent space, decoded; without guidance and with CFG s = 3."""

from pathlib import Path

import torch

from figures.zoo.ldm import PER_DIGIT, SCALES, guided_samples
from refimpl.plots import image_grid, save

PAGE = "latent/ldm.md"
OUTPUTS = ("ldm_samples.svg",)
COLUMNS = 5  # samples per caption and scale; column j of both panels starts from the same z_T


def make(out: Path, preset: str) -> None:
    samples = guided_samples(preset)
    rows = [torch.cat([samples[f"cfg_{s:g}"][k * PER_DIGIT:k * PER_DIGIT + COLUMNS] for s in SCALES])
            for k in range(10)]
    titles = [f"{'不引导' if s == 1 else 'CFG'} s={s:g}" for s in SCALES]
    fig = image_grid(torch.stack(rows), column_titles=[""] * len(SCALES) * COLUMNS,
                     row_titles=[f"“{k}”" for k in range(10)], size=0.55)
    for ax, title in zip(fig.axes[:len(SCALES) * COLUMNS:COLUMNS], titles):  # each title over its group of columns
        ax.set_title(title, loc="left")
    save(fig, out / "ldm_samples.svg")
