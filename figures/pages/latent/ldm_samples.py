"""LDM samples for the captions "the digit k": DDIM in latent space, decoded; without guidance and with CFG s = 3."""

from pathlib import Path

import torch

from figures.zoo.ldm import PER_DIGIT, SCALES, guided_samples
from refimpl.plots import image_grid, save

PAGE = "latent/ldm.md"
OUTPUTS = ("ldm_samples.png",)
COLUMNS = 5  # samples per caption and scale; column j of both panels starts from the same z_T


def make(out: Path, preset: str) -> None:
    samples = guided_samples(preset)
    rows = [torch.cat([samples[f"cfg_{s:g}"][k * PER_DIGIT:k * PER_DIGIT + COLUMNS] for s in SCALES])
            for k in range(10)]
    titles = [f"s={s:g}" if j == 0 else "" for s in SCALES for j in range(COLUMNS)]
    fig = image_grid(torch.stack(rows), column_titles=titles, row_titles=[f"“{k}”" for k in range(10)], size=0.55)
    save(fig, out / "ldm_samples.png")
